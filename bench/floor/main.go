// Command floor measures the apiserver's create limit with the most efficient client we can
// build here: client-go over HTTP/2, many workers, no client-side rate limit. The benchmark
// compares the operator's convergence against this floor, so the floor must not be the
// client's limit. It creates -count NetworkPolicies (deny-all, the body of bench's netpol())
// in -namespace and prints {"objects", "seconds", "rate", ...} as one JSON line.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	networkingv1client "k8s.io/client-go/kubernetes/typed/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// version is set at build time (-X main.version=<source hash>) so the cache can check it.
var version = "dev"

type result struct {
	Objects     int     `json:"objects"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"rate"`
	Workers     int     `json:"workers"`
	Connections int     `json:"connections"`
	Protobuf    bool    `json:"protobuf"`
	Failed      int64   `json:"failed"`
	FirstError  string  `json:"first_error,omitempty"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the apiserver to measure")
	namespace := flag.String("namespace", "bench-floor", "namespace to create the objects in (created if absent)")
	count := flag.Int("count", 3000, "NetworkPolicies to create")
	workers := flag.Int("workers", 64, "concurrent create loops")
	connections := flag.Int("connections", 1, "HTTP/2 connections the workers share (one client each)")
	protobuf := flag.Bool("protobuf", false, "send protobuf instead of JSON")
	prefix := flag.String("prefix", "p", "object name prefix")
	showVersion := flag.Bool("version", false, "print the build's source hash and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	out, err := run(*kubeconfig, *namespace, *prefix, *count, *workers, *connections, *protobuf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
	if out.Failed > 0 {
		os.Exit(2)
	}
}

// config loads the kubeconfig with client-side rate limiting off: a negative QPS means no
// token bucket at all (client-go's defaults, 5 QPS / burst 10, would make this a client floor).
func config(kubeconfig string, protobuf bool) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = -1, 0
	cfg.UserAgent = "dpo-bench-floor/" + version
	if protobuf {
		cfg.ContentType = "application/vnd.kubernetes.protobuf"
		cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	}
	return cfg, nil
}

// clients builds one networking client per connection. Each rest.Config copy gets its own
// transport (a distinct Dial func defeats client-go's transport cache), hence its own HTTP/2
// connection; the workers share them round-robin.
func clients(cfg *rest.Config, connections int) ([]*networkingv1client.NetworkingV1Client, error) {
	out := make([]*networkingv1client.NetworkingV1Client, 0, connections)
	for i := 0; i < connections; i++ {
		c := rest.CopyConfig(cfg)
		if connections > 1 {
			c.Dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		}
		client, err := networkingv1client.NewForConfig(c)
		if err != nil {
			return nil, err
		}
		out = append(out, client)
	}
	return out, nil
}

func ensureNamespace(ctx context.Context, cfg *rest.Config, name string) error {
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	_, err = core.Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func denyAll(name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{
				networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress,
			},
		},
	}
}

func run(kubeconfig, namespace, prefix string, count, workers, connections int, protobuf bool) (result, error) {
	if count < 1 || workers < 1 || connections < 1 {
		return result{}, errors.New("-count, -workers and -connections must be positive")
	}
	ctx := context.Background()
	cfg, err := config(kubeconfig, protobuf)
	if err != nil {
		return result{}, err
	}
	if err := ensureNamespace(ctx, cfg, namespace); err != nil {
		return result{}, err
	}
	pool, err := clients(cfg, connections)
	if err != nil {
		return result{}, err
	}
	// Open every connection (TLS handshake, HTTP/2 preface) before the clock starts: the
	// floor is the steady create rate, not the connection set-up.
	for _, c := range pool {
		if _, err := c.NetworkPolicies(namespace).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			return result{}, err
		}
	}
	var next, failed atomic.Int64
	var firstError atomic.Value
	var wg sync.WaitGroup
	started := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(client *networkingv1client.NetworkingV1Client) {
			defer wg.Done()
			policies := client.NetworkPolicies(namespace)
			for {
				i := next.Add(1) - 1
				if i >= int64(count) {
					return
				}
				_, err := policies.Create(ctx, denyAll(fmt.Sprintf("%s%d", prefix, i)), metav1.CreateOptions{})
				if err != nil {
					failed.Add(1)
					firstError.CompareAndSwap(nil, err.Error())
				}
			}
		}(pool[w%len(pool)])
	}
	wg.Wait()
	seconds := time.Since(started).Seconds()
	out := result{
		Objects: count, Seconds: seconds, Rate: float64(count) / seconds,
		Workers: workers, Connections: connections, Protobuf: protobuf, Failed: failed.Load(),
	}
	if e, ok := firstError.Load().(string); ok {
		out.FirstError = e
	}
	return out, nil
}
