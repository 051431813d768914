{{- define "modelyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "modelyard.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "modelyard.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelyard.registryName" -}}{{ include "modelyard.fullname" . | trunc 54 | trimSuffix "-" }}-registry{{- end -}}
{{- define "modelyard.operatorName" -}}{{ include "modelyard.fullname" . | trunc 54 | trimSuffix "-" }}-operator{{- end -}}
{{- define "modelyard.tokensSecret" -}}{{ include "modelyard.fullname" . | trunc 56 | trimSuffix "-" }}-tokens{{- end -}}

{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Call with (dict "root" $ "component" "registry"|"operator"|"crd"). */}}
{{- define "modelyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: modelyard
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "modelyard.image" -}}
{{- $repository := required "image.repository is not set: no Modelyard image is published yet. Build docker/modelyard.Dockerfile and docker/runtime.Dockerfile, load them into your cluster and set image.repository/tag and operator.runtimeImage.repository/tag; `make local-cluster` does it all on kind, minikube or k3d (README: Run it on a local cluster)" .Values.image.repository -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "modelyard.runtimeImage" -}}
{{- $o := .Values.operator -}}
{{- $repository := required "operator.runtimeImage.repository is not set: the model pods' image (docker/runtime.Dockerfile) is not published yet. Build it, load it into your cluster and set operator.runtimeImage.repository/tag; `make local-cluster` does it all on kind, minikube or k3d (README: Run it on a local cluster)" $o.runtimeImage.repository -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $o.runtimeImage.tag) -}}
{{- end -}}

{{- define "modelyard.registryUrl" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "modelyard.registryName" .) .Release.Namespace (int .Values.registry.port)) .Values.operator.registryUrl -}}
{{- end -}}

{{- define "modelyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "modelyard.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The registry is single-writer on SQLite or local files: refuse replicas it cannot serve. */}}
{{- define "modelyard.checkRegistry" -}}
{{- $r := .Values.registry -}}
{{- if and (gt (int $r.replicas) 1) (or (not $r.database.urlSecretRef.name) (not (hasPrefix "s3://" $r.artifacts.url))) -}}
{{- fail "registry.replicas > 1 needs registry.database.urlSecretRef (PostgreSQL) and an s3:// registry.artifacts.url: SQLite and files on one PVC are single-writer" -}}
{{- end -}}
{{- if and (hasPrefix "s3://" $r.artifacts.url) (not $r.artifacts.s3CredentialsSecret) -}}
{{- fail "registry.artifacts.url is on S3: set registry.artifacts.s3CredentialsSecret (a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)" -}}
{{- end -}}
{{- end -}}

{{/* Whether the registry needs its data volume (SQLite or local artifacts). */}}
{{- define "modelyard.registryNeedsVolume" -}}
{{- if or (not .Values.registry.database.urlSecretRef.name) (not (hasPrefix "s3://" .Values.registry.artifacts.url)) -}}true{{- end -}}
{{- end -}}


{{/* A map of labels as k=v,k2=v2 (sorted), for a flag. */}}
{{- define "modelyard.labelList" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
