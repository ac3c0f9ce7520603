// Command floor measures the apiserver's create limit with the most efficient client we can
// build here: client-go over HTTP/2, many workers, no client-side rate limit. The benchmark
// compares the operator's convergence against this floor, so the floor must not be the
// client's limit. It creates -count NetworkPolicies in -namespace and prints {"objects",
// "seconds", "rate", ...} as one JSON line. -body minimal creates deny-all with a name and
// nothing else (the body of bench's netpol()); -body operator creates what the operator
// writes in the Separate layout, in turn: deny-all, allow-DNS and allow-kube-system, each with
// three labels like the operator's (managed-by a same-length other value) and a controller
// ownerReference (to the floor's namespace here, to the profile there), so the apiserver
// decodes, validates, tracks managed fields of and stores the same objects as the operator's.
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
	"k8s.io/apimachinery/pkg/util/intstr"
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
	Body        string  `json:"body"`
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
	body := flag.String("body", "minimal", "minimal (deny-all, a name only) or operator (the operator's three policies)")
	showVersion := flag.Bool("version", false, "print the build's source hash and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	out, err := run(*kubeconfig, *namespace, *prefix, *body, *count, *workers, *connections, *protobuf)
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

// ensureNamespace creates the namespace if absent and returns it (the operator body's owner).
func ensureNamespace(ctx context.Context, cfg *rest.Config, name string) (*corev1.Namespace, error) {
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	created, err := core.Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return core.Namespaces().Get(ctx, name, metav1.GetOptions{})
	}
	return created, err
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

// operatorPolicy is the i-th object the operator writes in the Separate layout: its three
// policies in turn, as rendered from templates/networkpolicy, labelled and owned as it does.
func operatorPolicy(name string, i int64, owner *corev1.Namespace) *networkingv1.NetworkPolicy {
	kubeSystem := &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}}
	policy, spec := "deny-all", networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
	}
	switch i % 3 {
	case 1:
		udp, tcp, dns := corev1.ProtocolUDP, corev1.ProtocolTCP, intstr.FromInt32(53)
		policy, spec = "allow-dns", networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Port: &dns, Protocol: &udp}, {Port: &dns, Protocol: &tcp}},
				To: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: kubeSystem,
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
				}},
			}},
		}
	case 2:
		policy, spec = "allow-kube-system", networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: kubeSystem}},
			}},
		}
	}
	controller, block := true, false
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				// As long as the operator's value, and not it: the operator would take these
				// for its own (of a profile that is gone) and delete them when it starts.
				"app.kubernetes.io/managed-by": "default-policy-benchflr",
				"defaultpolicy.dev/policy":     policy,
				"defaultpolicy.dev/profile":    "bench-floor",
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Namespace", Name: owner.Name, UID: owner.UID,
				Controller: &controller, BlockOwnerDeletion: &block,
			}},
		},
		Spec: spec,
	}
}

func run(kubeconfig, namespace, prefix, body string, count, workers, connections int, protobuf bool) (result, error) {
	if count < 1 || workers < 1 || connections < 1 {
		return result{}, errors.New("-count, -workers and -connections must be positive")
	}
	if body != "minimal" && body != "operator" {
		return result{}, errors.New("-body must be minimal or operator")
	}
	ctx := context.Background()
	cfg, err := config(kubeconfig, protobuf)
	if err != nil {
		return result{}, err
	}
	owner, err := ensureNamespace(ctx, cfg, namespace)
	if err != nil {
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
				name := fmt.Sprintf("%s%d", prefix, i)
				object := denyAll(name)
				if body == "operator" {
					object = operatorPolicy(name, i, owner)
				}
				_, err := policies.Create(ctx, object, metav1.CreateOptions{})
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
		Workers: workers, Connections: connections, Protobuf: protobuf, Body: body, Failed: failed.Load(),
	}
	if e, ok := firstError.Load().(string); ok {
		out.FirstError = e
	}
	return out, nil
}
