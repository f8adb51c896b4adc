{{/* Chart name, truncated to a DNS label. */}}
{{- define "saeops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-saeops unless the release name already contains the chart name. */}}
{{- define "saeops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version */}}
{{- define "saeops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "saeops.labels" -}}
helm.sh/chart: {{ include "saeops.chart" . }}
{{ include "saeops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: saeops
{{- end }}

{{/* Labels selecting the operator pod. */}}
{{- define "saeops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "saeops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels the operator puts on the pods of runs and caches (contract with saeops.operator.render). */}}
{{- define "saeops.runtimeSelectorLabels" -}}
app.kubernetes.io/name: saeops
app.kubernetes.io/managed-by: saeops-operator
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "saeops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "saeops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image reference: repository@digest or repository:tag (default <appVersion>-cpu). */}}
{{- define "saeops.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Watched namespaces as a JSON list (namespaced mode): watch.namespaces or the release namespace. */}}
{{- define "saeops.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Whether the Prometheus Operator API is available (or forced): call with (dict "ctx" $ "force" bool). */}}
{{- define "saeops.monitoringEnabled" -}}
{{- if or .force (.ctx.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{- end }}
{{- end }}

{{/*
RBAC rules the operator needs in a namespace it watches: exactly the verbs its code calls
(tests/deploy/test_rbac.py derives them from the requests the operator makes against the API
emulator), plus `update` on the kinds' finalizers, which the API server's admission demands of
whoever sets blockOwnerDeletion in an owner reference. No wildcards, no Secrets, Pods read-only.
*/}}
{{- define "saeops.rbacRules" -}}
# The three kinds: kopf lists, watches and patches them (its finalizer and annotations); sweeps
# create trials; ttlSecondsAfterFinished deletes runs and caches.
- apiGroups: ["saeops.io"]
  resources: ["saetrainingruns"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]
- apiGroups: ["saeops.io"]
  resources: ["activationcaches"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["saeops.io"]
  resources: ["saesweeps"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["saeops.io"]
  resources: ["saetrainingruns/status", "activationcaches/status", "saesweeps/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["saeops.io"]
  resources: ["saetrainingruns/finalizers", "activationcaches/finalizers", "saesweeps/finalizers"]
  verbs: ["update"]
# Children of a run: the Indexed Job (watched for progress), its headless Service, the spec
# ConfigMap{{ if .Values.runs.networkPolicy.enabled }} and the run's NetworkPolicy{{ end }}: read by name, created, deleted; never listed or patched.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "delete"]
{{- if .Values.runs.networkPolicy.enabled }}
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "delete"]
{{- end }}
# Pods are only read (phase, termination messages, the rank-0 address for progress).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# kopf posts events on the objects it handles.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The operator pod as a NetworkPolicyPeer (JSON): its namespace, pinned by the label the API server sets, and its labels. */}}
{{- define "saeops.operatorPeer" -}}
{{- $ns := dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace) }}
{{- $pod := dict "matchLabels" (include "saeops.selectorLabels" . | fromYaml) }}
{{- dict "namespaceSelector" $ns "podSelector" $pod | toJson }}
{{- end }}
