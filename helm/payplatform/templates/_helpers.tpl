{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "payplatform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name. */}}
{{- define "payplatform.fullname" -}}
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

{{- define "payplatform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "payplatform.labels" -}}
helm.sh/chart: {{ include "payplatform.chart" . }}
app.kubernetes.io/name: {{ include "payplatform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: payplatform
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "payd"). */}}
{{- define "payplatform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "payplatform.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full labels of one component. */}}
{{- define "payplatform.componentLabels" -}}
{{ include "payplatform.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "payplatform.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "payplatform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "payplatform.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "payplatform.paydName" -}}
{{- printf "%s-payd" (include "payplatform.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one adapter's objects: call with (dict "ctx" $ "channel" "wechat"). */}}
{{- define "payplatform.adapterName" -}}
{{- printf "%s-adapter-%s" (include "payplatform.fullname" .ctx) .channel | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The env payd needs from its Secret, shared by the Deployment and the migrations Job. */}}
{{- define "payplatform.paydSecretEnv" -}}
- name: PAYD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.payd.existingSecret }}
      key: {{ .Values.payd.secretKeys.databaseUrl }}
- name: PAYD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.payd.existingSecret }}
      key: {{ .Values.payd.secretKeys.redisUrl }}
{{- end }}

{{/* Pod anti-affinity spreading one component over nodes ("hard" or "soft"). */}}
{{- define "payplatform.antiAffinity" -}}
{{- if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "payplatform.selectorLabels" . | nindent 10 }}
{{- else }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "payplatform.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}
