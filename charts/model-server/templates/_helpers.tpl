{{/* Names: the release name is the ModelDeployment's name, so it is the default. */}}
{{- define "model-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "model-server.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "model-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (Deployment selectors are immutable). */}}
{{- define "model-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object but the version ones. */}}
{{- define "model-server.commonLabels" -}}
helm.sh/chart: {{ include "model-server.chart" . }}
{{ include "model-server.selectorLabels" . }}
app.kubernetes.io/component: model-server
app.kubernetes.io/part-of: modelyard
app.kubernetes.io/managed-by: {{ .Release.Service }}
modelyard.io/model: {{ .Values.model.name | trunc 63 | trimSuffix "-" | quote }}
{{- end -}}

{{/* The version labels for a model version number. */}}
{{- define "model-server.versionLabels" -}}
app.kubernetes.io/version: {{ printf "v%d" (int .) | quote }}
modelyard.io/version: {{ int . | toString | quote }}
{{- end -}}

{{/* Labels on every object; the version is the one the primary track serves. */}}
{{- define "model-server.labels" -}}
{{ include "model-server.commonLabels" . }}
{{ include "model-server.versionLabels" .Values.model.version }}
{{- end -}}

{{- define "model-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* How many replicas may run at most: decides whether a PodDisruptionBudget makes sense. */}}
{{- define "model-server.maxReplicas" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.maxReplicas | int }}{{- else -}}{{ .Values.replicas | int }}{{- end -}}
{{- end -}}

{{- define "model-server.hpaApiVersion" -}}
{{- if .Values.apiVersions.autoscaling -}}{{ .Values.apiVersions.autoscaling }}
{{- else if .Capabilities.APIVersions.Has "autoscaling/v2" -}}autoscaling/v2
{{- else -}}autoscaling/v2beta2
{{- end -}}
{{- end -}}

{{- define "model-server.pdbApiVersion" -}}
{{- if .Values.apiVersions.policy -}}{{ .Values.apiVersions.policy }}
{{- else if .Capabilities.APIVersions.Has "policy/v1" -}}policy/v1
{{- else -}}policy/v1beta1
{{- end -}}
{{- end -}}

{{- define "model-server.cacheClaim" -}}
{{- default (printf "%s-cache" (include "model-server.fullname" .)) .Values.cache.persistentVolumeClaim.claimName -}}
{{- end -}}

{{/*
One Deployment: the primary track, or the canary (its own version and replicas).
Call with (dict "root" $ "track" "stable"|"canary" "version" N "digest" D "replicas" R).
*/}}
{{- define "model-server.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $ref := printf "%s:%d" $v.model.name (int .version) -}}
{{- $gpu := int $v.resources.gpu -}}
{{- $vllm := eq (toString $v.serving.engine) "vllm" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "model-server.fullname" $root }}{{ if eq .track "canary" }}-canary{{ end }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "model-server.commonLabels" $root | nindent 4 }}
    {{- include "model-server.versionLabels" .version | nindent 4 }}
    modelyard.io/track: {{ .track }}
  {{- with .digest }}
  annotations:
    modelyard.io/digest: {{ . | quote }}
  {{- end }}
spec:
  {{- if not (and $v.autoscaling.enabled (eq .track "stable")) }}
  replicas: {{ .replicas | int }}
  {{- end }}
  revisionHistoryLimit: 3
  progressDeadlineSeconds: {{ $v.rollout.progressDeadlineSeconds | int }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "model-server.selectorLabels" $root | nindent 6 }}
      modelyard.io/track: {{ .track }}
  template:
    metadata:
      labels:
        {{- include "model-server.commonLabels" $root | nindent 8 }}
        {{- include "model-server.versionLabels" .version | nindent 8 }}
        modelyard.io/track: {{ .track }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        modelyard.io/digest: {{ .digest | default "unknown" | quote }}
        {{- if $v.serviceMonitor.enabled }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | int }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        seccompProfile:
          type: RuntimeDefault
      initContainers:
        - name: pull
          image: {{ include "model-server.image" $root | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          command: ["modelyard", "pull", {{ $ref | quote }}, "--to", "/cache"]
          env:
            {{- include "model-server.env" $root | nindent 12 }}
          securityContext:
            {{- include "model-server.containerSecurityContext" $root | nindent 12 }}
          resources:
            requests:
              cpu: "100m"
              memory: "256Mi"
            limits:
              memory: "1Gi"
          volumeMounts:
            - {name: cache, mountPath: /cache}
            - {name: tmp, mountPath: /tmp}
            {{- if $v.verify.trustSecret }}
            - {name: trust, mountPath: /etc/modelyard/trust, readOnly: true}
            {{- end }}
      containers:
        - name: model-server
          image: {{ include "model-server.image" $root | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          command: ["modelyard", "serve", {{ $ref | quote }}, "--cache", "/cache", "--host", "0.0.0.0",
                    "--port", "3000"]
          env:
            {{- include "model-server.env" $root | nindent 12 }}
            - {name: MODELYARD_GPUS, value: {{ $gpu | toString | quote }}}
            - {name: MODELYARD_MAX_REQUEST_BYTES, value: {{ $v.serving.maxRequestBytes | int | toString | quote }}}
            - {name: MODELYARD_ENGINE, value: {{ $v.serving.engine | default "auto" | quote }}}
            {{- /* Only the settings of the server that serves the version: it refuses the other's. */}}
            {{- with $v.serving.tensor }}
            {{- if hasKey . "maxBatchSize" }}
            - {name: MODELYARD_MAX_BATCH_SIZE, value: {{ .maxBatchSize | int | toString | quote }}}
            {{- end }}
            {{- if hasKey . "maxLatencyMs" }}
            - {name: MODELYARD_MAX_LATENCY_MS, value: {{ .maxLatencyMs | int | toString | quote }}}
            {{- end }}
            {{- if hasKey . "workers" }}
            - {name: MODELYARD_SERVE_WORKERS, value: {{ .workers | int | toString | quote }}}
            {{- end }}
            {{- if hasKey . "batching" }}
            - {name: MODELYARD_BATCHING, value: {{ ternary "on" "off" .batching | quote }}}
            {{- end }}
            {{- if .grpc }}
            - {name: MODELYARD_GRPC_PORT, value: "8081"}
            {{- end }}
            {{- end }}
            {{- with $v.serving.llm }}
            {{- if hasKey . "maxRunning" }}
            - {name: MODELYARD_LLM_MAX_RUNNING, value: {{ .maxRunning | int | toString | quote }}}
            {{- end }}
            {{- if hasKey . "maxWaiting" }}
            - {name: MODELYARD_LLM_MAX_WAITING, value: {{ .maxWaiting | int | toString | quote }}}
            {{- end }}
            {{- if hasKey . "prefillTokens" }}
            - {name: MODELYARD_LLM_PREFILL_TOKENS, value: {{ .prefillTokens | int | toString | quote }}}
            {{- end }}
            {{- if .maxModelLen }}
            - {name: MODELYARD_MAX_MODEL_LEN, value: {{ .maxModelLen | int | toString | quote }}}
            {{- end }}
            {{- end }}
            {{- with $v.serving.vllm }}
            {{- if hasKey . "gpuMemoryUtilization" }}
            - {name: MODELYARD_VLLM_GPU_MEMORY_UTILIZATION, value: {{ .gpuMemoryUtilization | toString | quote }}}
            {{- end }}
            {{- if hasKey . "maxNumSeqs" }}
            - {name: MODELYARD_VLLM_MAX_NUM_SEQS, value: {{ .maxNumSeqs | int | toString | quote }}}
            {{- end }}
            {{- if hasKey . "enablePrefixCaching" }}
            - {name: MODELYARD_VLLM_PREFIX_CACHING, value: {{ ternary "on" "off" .enablePrefixCaching | quote }}}
            {{- end }}
            {{- if hasKey . "cpuKvCacheGiB" }}
            - {name: MODELYARD_VLLM_CPU_KV_CACHE_GIB, value: {{ .cpuKvCacheGiB | int | toString | quote }}}
            {{- end }}
            {{- if hasKey . "toolCallParser" }}
            - {name: MODELYARD_VLLM_TOOL_CALL_PARSER, value: {{ .toolCallParser | quote }}}
            {{- end }}
            {{- if hasKey . "compactJson" }}
            - {name: MODELYARD_VLLM_COMPACT_JSON, value: {{ ternary "on" "off" .compactJson | quote }}}
            {{- end }}
            {{- end }}
          ports:
            - {name: http, containerPort: 3000, protocol: TCP}
            {{- if ($v.serving.tensor | default dict).grpc }}
            - {name: grpc, containerPort: 8081, protocol: TCP}
            {{- end }}
          # BentoML answers /readyz only once the model is loaded (and warmed up);
          # /livez only says the server process is alive, so a slow load is not a restart.
          # vLLM listens only once its engine is up, and its /health fails when the engine died.
          startupProbe:
            httpGet: {path: {{ ternary "/health" "/livez" $vllm }}, port: http}
            periodSeconds: {{ $v.probes.startup.periodSeconds | int }}
            timeoutSeconds: {{ $v.probes.startup.timeoutSeconds | int }}
            failureThreshold: {{ $v.probes.startup.failureThreshold | int }}
          readinessProbe:
            httpGet: {path: {{ ternary "/health" "/readyz" $vllm }}, port: http}
            initialDelaySeconds: {{ $v.probes.readiness.initialDelaySeconds | int }}
            periodSeconds: {{ $v.probes.readiness.periodSeconds | int }}
            timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds | int }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold | int }}
          livenessProbe:
            httpGet: {path: {{ ternary "/health" "/livez" $vllm }}, port: http}
            initialDelaySeconds: {{ $v.probes.liveness.initialDelaySeconds | int }}
            periodSeconds: {{ $v.probes.liveness.periodSeconds | int }}
            timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds | int }}
            failureThreshold: {{ $v.probes.liveness.failureThreshold | int }}
          lifecycle:
            # Let endpoints drop this pod before the server stops taking requests.
            preStop:
              exec: {command: ["sleep", "5"]}
          securityContext:
            {{- include "model-server.containerSecurityContext" $root | nindent 12 }}
          resources:
            requests:
              cpu: {{ $v.resources.cpu | toString | quote }}
              memory: {{ $v.resources.memory | toString | quote }}
              {{- if gt $gpu 0 }}
              nvidia.com/gpu: {{ $gpu | toString | quote }}
              {{- end }}
            limits:
              cpu: {{ default $v.resources.cpu $v.resources.cpuLimit | toString | quote }}
              memory: {{ default $v.resources.memory $v.resources.memoryLimit | toString | quote }}
              {{- if gt $gpu 0 }}
              nvidia.com/gpu: {{ $gpu | toString | quote }}
              {{- end }}
          volumeMounts:
            - {name: cache, mountPath: /cache}
            - {name: tmp, mountPath: /tmp}
            {{- if $vllm }}
            - {name: shm, mountPath: /dev/shm}
            {{- end }}
            {{- if $v.verify.trustSecret }}
            - {name: trust, mountPath: /etc/modelyard/trust, readOnly: true}
            {{- end }}
      volumes:
        - name: cache
          {{- if $v.cache.persistentVolumeClaim.enabled }}
          persistentVolumeClaim:
            claimName: {{ include "model-server.cacheClaim" $root }}
          {{- else }}
          emptyDir:
            {{- with $v.cache.sizeLimit }}
            sizeLimit: {{ . | quote }}
            {{- end }}
          {{- end }}
        - name: tmp
          emptyDir:
            sizeLimit: 1Gi
        {{- if $v.verify.trustSecret }}
        - name: trust
          secret:
            secretName: {{ $v.verify.trustSecret | quote }}
        {{- end }}
        {{- if $vllm }}
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $v.serving.shmSize | default "1Gi" | quote }}
        {{- end }}
      {{- $selector := deepCopy (default dict $v.nodeSelector) }}
      {{- if and (gt $gpu 0) $v.resources.gpuType }}
      {{- $_ := set $selector "nvidia.com/gpu.product" $v.resources.gpuType }}
      {{- end }}
      {{- with $selector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if or (gt $gpu 0) $v.tolerations }}
      tolerations:
        {{- if gt $gpu 0 }}
        - key: nvidia.com/gpu
          operator: Exists
          effect: NoSchedule
        {{- end }}
        {{- with $v.tolerations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{- define "model-server.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Registry address and token (from a Secret, never a literal), HOME on a writable volume. */}}
{{- define "model-server.env" -}}
- {name: MODELYARD_REGISTRY_URL, value: {{ .Values.registry.url | quote }}}
{{- with .Values.registry.tokenSecretRef }}
{{- if .name }}
- name: MODELYARD_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .name | quote }}, key: {{ default "token" .key | quote }}}
{{- end }}
{{- end }}
- {name: HOME, value: /tmp}
- {name: MODELYARD_HOME, value: /cache}
- {name: BENTOML_DO_NOT_TRACK, value: "true"}
{{- with .Values.verify }}
{{- if or .requireSignature .signers }}
- {name: MODELYARD_REQUIRE_SIGNATURE, value: "true"}
{{- end }}
{{- with .signers }}
- {name: MODELYARD_SIGNERS, value: {{ join "," . | quote }}}
{{- end }}
{{- if .trustSecret }}
- {name: MODELYARD_TRUST_DIR, value: /etc/modelyard/trust}
{{- end }}
{{- end }}
{{- end -}}
