{{/* The chart's name, and the release's full name (at most 63 characters). */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- end }}

{{/* The labels that select the release's pods; a component is added to each. */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shoal.schedulerName" -}}
{{- printf "%s-scheduler" (include "shoal.fullname" .) }}
{{- end }}

{{/* The scheduler's address as workers and in-cluster clients reach it. */}}
{{- define "shoal.schedulerAddress" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "tls" "tcp" .Values.tls.enabled) (include "shoal.schedulerName" .) .Release.Namespace (int .Values.scheduler.port) }}
{{- end }}

{{- define "shoal.secretName" -}}
{{- default (printf "%s-token" (include "shoal.fullname" .)) .Values.token.existingSecret }}
{{- end }}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shoal.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag }}
{{- if .gpu }}
{{- $tag = default (printf "%s-gpu" $tag) .root.Values.image.gpuTag }}
{{- end }}
{{- printf "%s:%s" .root.Values.image.repository $tag }}
{{- end }}

{{/* The token, from the Secret, in every container's environment. */}}
{{- define "shoal.tokenEnv" -}}
- name: SHOAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "shoal.secretName" . }}
      key: {{ .Values.token.key }}
{{- end }}

{{/* TLS flags (the files come from the Secret mounted at /etc/shoal/tls). */}}
{{- define "shoal.tlsArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-ca=/etc/shoal/tls/ca.crt
- --tls-cert=/etc/shoal/tls/tls.crt
- --tls-key=/etc/shoal/tls/tls.key
{{- end }}
{{- end }}

{{- define "shoal.tlsVolumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/shoal/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "shoal.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "shoal.probeScheme" -}}
{{- ternary "HTTPS" "HTTP" .Values.tls.enabled }}
{{- end }}

{{/*
A worker group's settings: the group's values merged over workerDefaults.
Called with (dict "root" $ "name" NAME "group" VALUES); returns YAML.
*/}}
{{- define "shoal.group" -}}
{{- $group := mergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy (default (dict) .group)) }}
{{- toYaml $group }}
{{- end }}

{{/* Cores from a CPU quantity ("2", 1.5, "500m"), rounded up, at least 1. */}}
{{- define "shoal.cores" -}}
{{- $q := toString . }}
{{- $n := 0.0 }}
{{- if hasSuffix "m" $q }}
{{- $n = divf (float64 (trimSuffix "m" $q)) 1000.0 }}
{{- else }}
{{- $n = float64 $q }}
{{- end }}
{{- max 1 (int (ceil $n)) }}
{{- end }}

{{/* Bytes from a memory quantity ("2Gi", "512M", 1e9), as an integer. */}}
{{- define "shoal.bytes" -}}
{{- $q := toString . }}
{{- $units := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "K" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 }}
{{- $number := regexFind "^[0-9.eE+-]+" $q }}
{{- $unit := trimPrefix $number $q }}
{{- $factor := 1.0 }}
{{- if $unit }}
{{- $factor = required (printf "unknown memory unit %q in %q" $unit $q) (get $units $unit) }}
{{- end }}
{{- printf "%.0f" (mulf (float64 $number) $factor) }}
{{- end }}
