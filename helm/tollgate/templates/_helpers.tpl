{{/* Chart name, or nameOverride. */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: "<release>-tollgate", or the release name alone when it already
contains the chart name. Kept at 57 characters so that "-peers" still fits in 63.
*/}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" . }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{/* Labels that select this release's pods (Services, PDB, NetworkPolicy, spread). */}}
{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The headless Service that peers discover each other through. */}}
{{- define "tollgate.peerServiceName" -}}
{{- printf "%s-peers" (include "tollgate.fullname" .) }}
{{- end }}

{{/* --peer-dns: the headless Service's fully qualified name and the peer port. */}}
{{- define "tollgate.peerDns" -}}
{{- printf "%s.%s.svc.%s:%d" (include "tollgate.peerServiceName" .) .Release.Namespace .Values.clusterDomain (int .Values.ports.peer) }}
{{- end }}

{{/* --peer-tls-server-name: the name every pod's certificate is verified against. */}}
{{- define "tollgate.peerTlsServerName" -}}
{{- default (printf "%s.%s.svc.%s" (include "tollgate.peerServiceName" .) .Release.Namespace .Values.clusterDomain) .Values.replication.tls.serverName }}
{{- end }}

{{- define "tollgate.limitsConfigMapName" -}}
{{- default (printf "%s-limits" (include "tollgate.fullname" .)) .Values.limits.existingConfigMap }}
{{- end }}

{{- define "tollgate.clusterSecretName" -}}
{{- default (printf "%s-cluster-secret" (include "tollgate.fullname" .)) .Values.replication.clusterSecret.existingSecret }}
{{- end }}

{{- define "tollgate.clusterSecretEnabled" -}}
{{- if and .Values.replication.enabled (or .Values.replication.clusterSecret.existingSecret .Values.replication.clusterSecret.value .Values.replication.clusterSecret.generate) }}true{{ end }}
{{- end }}

{{/*
Combinations the schema cannot express. Fails the render with a message that says what to change.
*/}}
{{- define "tollgate.validate" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- $needed := add (int .Values.preStopSleepSeconds) (int .Values.server.shutdownTimeoutSeconds) }}
{{- if le $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + server.shutdownTimeoutSeconds (%d), or the kubelet kills pods before they hand their state to peers" $grace $needed) }}
{{- end }}
{{- if not .Values.replication.enabled }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "replication.enabled=false: every pod would enforce the full limits on its own, multiplying them by the pod count; set replicaCount=1 and autoscaling.enabled=false, or enable replication" }}
{{- end }}
{{- end }}
{{- if and .Values.replication.enabled .Values.replication.tls.enabled (not .Values.replication.tls.secretName) }}
{{- fail "replication.tls.enabled=true needs replication.tls.secretName (a Secret with tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- if and .Values.grpcTls.enabled (not .Values.grpcTls.secretName) }}
{{- fail "grpcTls.enabled=true needs grpcTls.secretName (a Secret with tls.crt, tls.key and, for client certificates, ca.crt)" }}
{{- end }}
{{- if and (not .Values.limits.existingConfigMap) (not .Values.limits.files) }}
{{- fail "no limits: set limits.files or limits.existingConfigMap" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if not (or .Values.autoscaling.requestsPerSecond.enabled .Values.autoscaling.cpu.enabled) }}
{{- fail "autoscaling.enabled=true needs autoscaling.requestsPerSecond.enabled or autoscaling.cpu.enabled" }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The chart creates the cluster secret itself (from replication.clusterSecret.value). */}}
{{- define "tollgate.clusterSecretCreated" -}}
{{- if and (include "tollgate.clusterSecretEnabled" .) (not .Values.replication.clusterSecret.existingSecret) }}true{{ end }}
{{- end }}

{{/* The cluster secret's value in the chart's Secret: the given one, else the installed one
(kept across upgrades), else a new random one. */}}
{{- define "tollgate.clusterSecretValue" -}}
{{- $c := .Values.replication.clusterSecret }}
{{- if $c.value }}
{{- $c.value | b64enc }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "tollgate.clusterSecretName" .) }}
{{- if and $existing (index ($existing.data | default dict) $c.key) }}
{{- index $existing.data $c.key }}
{{- else }}
{{- randAlphaNum 48 | b64enc }}
{{- end }}
{{- end }}
{{- end }}
