{{/* The release's name for its objects, shortened to Kubernetes' 63 characters. */}}
{{- define "prism.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "prism.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selects one component's pods; call with (dict "root" $ "component" $name). */}}
{{- define "prism.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "prism.image" -}}
{{- $repository := required "image.repository is required: the registry path of the Prism image you built" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Whether ScaledObjects are made: keda.enabled true, or auto with KEDA's API present. */}}
{{- define "prism.keda" -}}
{{- if eq (toString .Values.keda.enabled) "auto" -}}
{{- if .Capabilities.APIVersions.Has "keda.sh/v1alpha1" -}}true{{- end -}}
{{- else if eq (toString .Values.keda.enabled) "true" -}}true{{- end -}}
{{- end -}}

{{- define "prism.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "prism.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Where the model files go in the pods that need them. */}}
{{- define "prism.modelEnv" -}}
- name: PRISM_DETECT__WEIGHTS
  value: /models/yolov8n.onnx
- name: PRISM_CLASSIFY__WEIGHTS
  value: /models/efficientnet-lite0.safetensors
- name: PRISM_CLASSIFY__LABELS
  value: /models/imagenet1k-labels.json
{{- end -}}

{{/* The settings every component reads; secrets as files, never as values. */}}
{{- define "prism.env" -}}
- name: PRISM_KAFKA__BROKERS
  value: {{ required "kafka.brokers is required" .Values.kafka.brokers | quote }}
- name: PRISM_KAFKA__GROUP_PREFIX
  value: {{ .Values.kafka.groupPrefix | quote }}
- name: PRISM_KAFKA__PARTITIONS
  value: {{ .Values.kafka.partitions | quote }}
{{- if .Values.kafka.saslPasswordSecret.name }}
- name: PRISM_KAFKA__SASL_PASSWORD_FILE
  value: /run/secrets/kafka/{{ .Values.kafka.saslPasswordSecret.key }}
{{- end }}
- name: PRISM_S3__ENDPOINT
  value: {{ .Values.s3.endpoint | quote }}
- name: PRISM_S3__REGION
  value: {{ .Values.s3.region | quote }}
- name: PRISM_S3__PATH_STYLE
  value: {{ .Values.s3.pathStyle | quote }}
{{- if .Values.s3.existingSecret }}
- name: PRISM_S3__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: PRISM_S3__SECRET_ACCESS_KEY_FILE
  value: /run/secrets/s3/{{ .Values.s3.secretAccessKeyKey }}
{{- end }}
- name: PRISM_COUCHDB__URL
  value: {{ required "couchdb.url is required" .Values.couchdb.url | quote }}
- name: PRISM_COUCHDB__DATABASE
  value: {{ .Values.couchdb.database | quote }}
- name: PRISM_COUCHDB__USERNAME
  value: {{ .Values.couchdb.username | quote }}
- name: PRISM_COUCHDB__PASSWORD_FILE
  value: /run/secrets/couchdb/{{ .Values.couchdb.passwordKey }}
- name: PRISM_INPUT_BUCKET
  value: {{ .Values.buckets.input | quote }}
- name: PRISM_OUTPUT_BUCKET
  value: {{ .Values.buckets.output | quote }}
- name: PRISM_ENABLED_STAGES
  value: {{ .Values.enabledStages | toJson | quote }}
- name: PRISM_OBSERVE__LISTEN
  value: {{ printf "0.0.0.0:%v" .Values.metricsPort | quote }}
{{- with .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
