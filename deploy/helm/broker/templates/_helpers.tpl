{{/* Chart name. */}}
{{- define "broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name if it already contains the chart name. */}}
{{- define "broker.fullname" -}}
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

{{- define "broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selects the server pods only (not the migration Job's pod). */}}
{{- define "broker.serverSelectorLabels" -}}
{{ include "broker.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "broker.labels" -}}
helm.sh/chart: {{ include "broker.chart" . }}
{{ include "broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: federation-broker
{{- end -}}

{{- define "broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "broker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding BROKER_SECRET_KEY, DATABASE_URL, REDIS_URL (and optionally the bootstrap key). */}}
{{- define "broker.secretName" -}}
{{- default (include "broker.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* Whether this chart creates that Secret. */}}
{{- define "broker.createSecret" -}}
{{- if and (not .Values.existingSecret) .Values.secrets.secretKey -}}true{{- end -}}
{{- end -}}

{{- define "broker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Environment shared by the server and the migration Job. Names are broker settings (broker/settings.py). */}}
{{- define "broker.env" -}}
{{- if not (hasPrefix "https://" .Values.publicUrl) -}}
{{- fail "publicUrl must start with https:// (BROKER_ENV=production refuses http:// public URLs)" -}}
{{- end -}}
{{- if hasKey .Values.settings "BROKER_DEV_IDP" -}}
{{- /* The false spellings of broker/settings.py _bool (lower-cased, not trimmed; empty means the default, off). */ -}}
{{- if not (has (lower (toString (index .Values.settings "BROKER_DEV_IDP"))) (list "false" "0" "no" "off" "")) -}}
{{- fail "settings.BROKER_DEV_IDP can only be false (false, 0, no or off): the development IdP is refused in production" -}}
{{- end -}}
{{- end -}}
{{- if hasKey .Values.settings "BROKER_PROXY_HOPS" -}}
{{- fail "set proxyHops, not settings.BROKER_PROXY_HOPS (the chart sets BROKER_PROXY_HOPS from proxyHops)" -}}
{{- end -}}
- name: BROKER_ENV
  value: production
- name: BROKER_PUBLIC_URL
  value: {{ .Values.publicUrl | trimSuffix "/" | quote }}
- name: BROKER_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: BROKER_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "broker.secretName" . }}
      key: {{ .Values.secretKeys.secretKey }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "broker.secretName" . }}
      key: {{ .Values.secretKeys.databaseUrl }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "broker.secretName" . }}
      key: {{ .Values.secretKeys.redisUrl }}
- name: BROKER_BOOTSTRAP_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "broker.secretName" . }}
      key: {{ .Values.secretKeys.bootstrapAdminKey }}
      optional: true
{{- range $name, $value := .Values.settings }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* BROKER_PROXY_HOPS for the server: proxyHops, a whole number >= 0 (the broker reads it as such). */}}
{{- define "broker.proxyHops" -}}
{{- $hops := .Values.proxyHops | default 0 -}}
{{- if or (ne (toString ($hops | int)) (toString $hops)) (lt ($hops | int) 0) -}}
{{- fail (printf "proxyHops must be a whole number of reverse proxies, 0 or more, got %v" $hops) -}}
{{- end -}}
{{- $hops | int -}}
{{- end -}}

{{/* Pod annotations: podAnnotations, plus prometheus.io/port = server.port when scraping is annotated and the
     port is not given explicitly (so that Prometheus follows --set server.port=...). */}}
{{- define "broker.podAnnotations" -}}
{{- $annotations := deepCopy (default (dict) .Values.podAnnotations) -}}
{{- if and (hasKey $annotations "prometheus.io/scrape") (not (hasKey $annotations "prometheus.io/port")) -}}
{{- $_ := set $annotations "prometheus.io/port" (toString .Values.server.port) -}}
{{- end -}}
{{- with $annotations -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}
