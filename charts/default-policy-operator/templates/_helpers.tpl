{{/*
Object names are fixed, not derived from the release name: the operator is one per cluster
(its CRD, ClusterRole and admission policy are cluster-wide), and fixed names keep the objects
identical to manifests/ so that moving from kustomize to Helm changes nothing but labels.
*/}}
{{- define "dpo.name" -}}default-policy-operator{{- end }}

{{/*
metadata.labels: the labels manifests/ sets (name, and component where given), Helm's
standard labels, then commonLabels (which cannot override the first two).
Call with (dict "ctx" $ "component" "operator"); component may be omitted.
*/}}
{{- define "dpo.labels" -}}
{{- $labels := dict "app.kubernetes.io/name" (include "dpo.name" .ctx) -}}
{{- with .component }}{{ $_ := set $labels "app.kubernetes.io/component" . }}{{ end -}}
{{- $_ := set $labels "helm.sh/chart" (printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version) -}}
{{- $_ := set $labels "app.kubernetes.io/managed-by" .ctx.Release.Service -}}
{{- $_ := set $labels "app.kubernetes.io/instance" .ctx.Release.Name -}}
{{- $_ := set $labels "app.kubernetes.io/version" .ctx.Chart.AppVersion -}}
{{- toYaml (merge $labels (.extra | default dict) .ctx.Values.commonLabels) -}}
{{- end }}

{{/* labels, and annotations when commonAnnotations (or .extraAnnotations) has any. */}}
{{- define "dpo.metadata" -}}
labels:
  {{- include "dpo.labels" . | nindent 2 }}
{{- with merge (dict) (.extraAnnotations | default dict) .ctx.Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The Deployment's selector: exactly manifests/' (a selector is immutable). */}}
{{- define "dpo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dpo.name" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "dpo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
