{{/* The release's full name, at most 63 characters. */}}
{{- define "wgnet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "wgnet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "wgnet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the operator's pods. */}}
{{- define "wgnet.selectorLabels" -}}
app.kubernetes.io/name: wireguard-gateway-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "wgnet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wgnet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wgnet.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "wgnet.linkImage" -}}
{{- printf "%s:%s" .Values.link.image.repository (default .Chart.AppVersion .Values.link.image.tag) -}}
{{- end -}}

{{/* policy.dnsSuffixes as --allowed-dns-suffixes: NAMESPACE=SUFFIX,... */}}
{{- define "wgnet.dnsSuffixes" -}}
{{- $out := list -}}
{{- range $ns, $suffixes := . -}}
{{- range $suffixes -}}
{{- $out = append $out (printf "%s=%s" $ns .) -}}
{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
