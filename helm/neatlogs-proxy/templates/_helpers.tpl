{{/* Chart name. */}}
{{- define "neatlogs-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name, truncated to the DNS-1123 limit. */}}
{{- define "neatlogs-proxy.fullname" -}}
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

{{- define "neatlogs-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "neatlogs-proxy.labels" -}}
helm.sh/chart: {{ include "neatlogs-proxy.chart" . }}
{{ include "neatlogs-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: proxy
{{- end }}

{{/* Selector labels (immutable once deployed). */}}
{{- define "neatlogs-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "neatlogs-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "neatlogs-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "neatlogs-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Workload kind: one PVC per pod needs a StatefulSet. */}}
{{- define "neatlogs-proxy.workloadKind" -}}
{{- if .Values.persistence.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/* Name of the Secret created by the chart. */}}
{{- define "neatlogs-proxy.secretName" -}}
{{- include "neatlogs-proxy.fullname" . }}
{{- end }}

{{/* secretKeyRef for the API key, or nothing. */}}
{{- define "neatlogs-proxy.apiKeyRef" -}}
{{- if and .Values.secrets.create .Values.secrets.apiKey }}
name: {{ include "neatlogs-proxy.secretName" . }}
key: api-key
{{- else if .Values.secrets.apiKeySecretRef.name }}
name: {{ .Values.secrets.apiKeySecretRef.name }}
key: {{ .Values.secrets.apiKeySecretRef.key }}
{{- end }}
{{- end }}

{{/* secretKeyRef for the gateway auth tokens, or nothing. */}}
{{- define "neatlogs-proxy.authTokensRef" -}}
{{- if and .Values.secrets.create .Values.secrets.authTokens }}
name: {{ include "neatlogs-proxy.secretName" . }}
key: auth-tokens
{{- else if .Values.secrets.authTokensSecretRef.name }}
name: {{ .Values.secrets.authTokensSecretRef.name }}
key: {{ .Values.secrets.authTokensSecretRef.key }}
{{- end }}
{{- end }}

{{/* NEATLOGS_PROXY_ROUTES from the routes map: NAME=URL,NAME=URL (sorted, stable). */}}
{{- define "neatlogs-proxy.routes" -}}
{{- $routes := list }}
{{- range $name, $url := .Values.proxy.routes }}
{{- $routes = append $routes (printf "%s=%s" $name $url) }}
{{- end }}
{{- join "," $routes }}
{{- end }}

{{/* Pod template shared by the Deployment and the StatefulSet. */}}
{{- define "neatlogs-proxy.podTemplate" -}}
metadata:
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- if .Values.secrets.create }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "neatlogs-proxy.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "neatlogs-proxy.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: proxy
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["run"]
      ports:
        - name: http
          containerPort: {{ .Values.proxy.port }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "neatlogs-proxy.fullname" . }}
      env:
        {{- with (include "neatlogs-proxy.apiKeyRef" .) }}
        - name: NEATLOGS_API_KEY
          valueFrom:
            secretKeyRef:
              {{- . | nindent 14 }}
        {{- end }}
        {{- with (include "neatlogs-proxy.authTokensRef" .) }}
        - name: NEATLOGS_PROXY_AUTH_TOKENS
          valueFrom:
            secretKeyRef:
              {{- . | nindent 14 }}
        {{- end }}
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- if or .Values.proxy.upstreamCA.configMap .Values.proxy.upstreamCA.secret }}
        - name: NEATLOGS_PROXY_UPSTREAM_CA
          value: /etc/neatlogs-proxy/upstream-ca/{{ .Values.proxy.upstreamCA.key }}
        {{- end }}
        {{- with .Values.proxy.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      livenessProbe:
        httpGet:
          path: /_neatlogs/healthz
          port: http
        initialDelaySeconds: {{ .Values.probes.liveness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /_neatlogs/readyz
          port: http
        initialDelaySeconds: {{ .Values.probes.readiness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /data
        - name: tmp
          mountPath: /tmp
        {{- if or .Values.proxy.upstreamCA.configMap .Values.proxy.upstreamCA.secret }}
        - name: upstream-ca
          mountPath: /etc/neatlogs-proxy/upstream-ca
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
    {{- with .Values.proxy.upstreamCA }}
    {{- if and .configMap .secret }}
    {{- fail "proxy.upstreamCA: set configMap or secret, not both" }}
    {{- else if .configMap }}
    - name: upstream-ca
      configMap:
        name: {{ .configMap }}
        items:
          - key: {{ .key }}
            path: {{ .key }}
    {{- else if .secret }}
    - name: upstream-ca
      secret:
        secretName: {{ .secret }}
        items:
          - key: {{ .key }}
            path: {{ .key }}
    {{- end }}
    {{- end }}
    {{- if not .Values.persistence.enabled }}
    - name: data
      emptyDir:
        sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  affinity:
    {{- if .Values.affinity }}
    {{- toYaml .Values.affinity | nindent 4 }}
    {{- else }}
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "neatlogs-proxy.selectorLabels" . | nindent 16 }}
    {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
