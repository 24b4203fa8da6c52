{{/* Names and labels. */}}
{{- define "distillery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "distillery.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "distillery.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "distillery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distillery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "distillery.labels" -}}
helm.sh/chart: {{ include "distillery.chart" . }}
{{ include "distillery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: distillery
{{- end -}}

{{- define "distillery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "distillery.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion.
A digest pins the image (repository:tag@digest). Usage:
  include "distillery.image" (dict "image" .Values.image "appVersion" .Chart.AppVersion)
*/}}
{{- define "distillery.image" -}}
{{- $tag := .image.tag | default .appVersion | toString -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "distillery.operatorImage" -}}
{{- include "distillery.image" (dict "image" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "distillery.trainerImage" -}}
{{- include "distillery.image" (dict "image" .Values.trainer.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/* The container security context of every pod this chart runs ("restricted" Pod Security). */}}
{{- define "distillery.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "distillery.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
What the operator does in a namespace it watches. Nothing more: no wildcards, Secrets only by
name (get), and never the spec of a DistillationJob (kopf patches only its own annotations
under distillery.io/ and its finalizer; results go to the /status subresource).
*/}}
{{- define "distillery.namespacedRules" -}}
# kopf watches both kinds and keeps its bookkeeping in annotations (distillery.io/*).
- apiGroups: ["distillery.io"]
  resources: ["distillationjobs"]
  verbs: ["get", "list", "watch", "patch"]
# Accepted students are registered as StudentModels; the operator follows them with a watch, reads
# the one a job continues (student.base.studentModel) and
# writes only their status (kopf keeps no bookkeeping on them).
- apiGroups: ["distillery.io"]
  resources: ["studentmodels"]
  verbs: ["get", "list", "watch", "create"]
# Everything the operator learns goes to status.
- apiGroups: ["distillery.io"]
  resources: ["distillationjobs/status", "studentmodels/status"]
  verbs: ["patch"]
# The trainer Job's ownerReference sets blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only to who may update finalizers.
- apiGroups: ["distillery.io"]
  resources: ["distillationjobs/finalizers"]
  verbs: ["update"]
# One trainer Job per job generation; older generations are deleted. The operator follows them
# with a watch (list, watch) rather than a GET per poll.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete"]
# A job with several workers gets a headless Service for its pods' DNS names (create only: it is
# owned by the DistillationJob, and the garbage collector deletes it with the job).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
# The trainer pods' termination messages (why a run failed).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# Secrets only by name (get), never listed or watched: the operator reads the Secret a job
# references to see its opt-in label (distillery.io/usable-by-jobs) and, with its store
# credentials, to read the trainer's progress.json and result.json. RBAC has no metadata-only
# read of Secrets, and the names differ per job, so get without resourceNames is the narrowest.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on DistillationJobs (kopf posts core events; events.k8s.io for newer clients).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* kopf discovers the custom resources by watching the CRDs (cluster-scoped). */}}
{{- define "distillery.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express, with messages that say what to change. */}}
{{- define "distillery.validate" -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.enabled=true (the ServiceMonitor scrapes the metrics port)" -}}
{{- end -}}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) -}}
{{- fail (printf "metrics.port and health.port must differ (both are %v)" .Values.metrics.port) -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.watchNamespaces -}}
{{- if hasKey $seen . -}}
{{- fail (printf "watchNamespaces lists %q twice" .) -}}
{{- end -}}
{{- $_ := set $seen . true -}}
{{- end -}}
{{- end -}}
