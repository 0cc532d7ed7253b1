{{- define "capstan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "capstan.fullname" -}}
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

{{/* The name of one Deployment of the `deployments` list: root context in .root, entry in .d. */}}
{{- define "capstan.deploymentName" -}}
{{- if .d.name -}}
{{- printf "%s-%s" (include "capstan.fullname" .root) .d.name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "capstan.fullname" .root -}}
{{- end -}}
{{- end -}}

{{- define "capstan.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "capstan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "capstan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capstan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "capstan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "capstan.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "capstan.secretName" -}}
{{- default (include "capstan.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "capstan.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The container's security context: non-root, read-only root, nothing to escalate to. */}}
{{- define "capstan.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsUser }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every Capstan container gets: the Secret's two keys. */}}
{{- define "capstan.secretEnv" -}}
- name: CAPSTAN_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "capstan.secretName" . }}
      key: master-key
- name: CAPSTAN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.secret.databaseUrlFrom.name }}
      name: {{ .Values.secret.databaseUrlFrom.name }}
      key: {{ .Values.secret.databaseUrlFrom.key }}
      {{- else }}
      name: {{ include "capstan.secretName" . }}
      key: database-url
      {{- end }}
{{- end -}}

{{/* "HTTPS" when Capstan serves TLS, for probes. */}}
{{- define "capstan.scheme" -}}
{{- if eq .Values.tls.mode "off" }}HTTP{{ else }}HTTPS{{ end }}
{{- end }}

{{/* The self-issued certificate's DNS names (a JSON list): tls.dnsNames, or the Service's
names in the namespace. */}}
{{- define "capstan.tlsDnsNames" -}}
{{- $root := .root -}}
{{- if $root.Values.tls.dnsNames -}}
{{- toJson $root.Values.tls.dnsNames -}}
{{- else -}}
{{- $svc := include "capstan.deploymentName" (dict "root" $root "d" .d) -}}
{{- $ns := $root.Release.Namespace -}}
{{- toJson (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) -}}
{{- end -}}
{{- end }}
