{{/*
Sidecar mode: named templates an application chart includes to run the relay
as a Kubernetes native sidecar (Kubernetes 1.29+): an initContainers entry
with restartPolicy: Always. Kubernetes starts it before the application
containers (waiting for its startup probe), keeps it running beside them,
and stops it after them. The application reaches it at
http://127.0.0.1:7700.

The application chart lists this chart as a dependency with
`mode: sidecar` in its values (the subchart then renders only the config
Secret and the flags ConfigMap), and passes the subchart's context,
`.Subcharts.flagrelay` (Helm 3.7+ and Helm 4; `.Subcharts.<alias>` when
the dependency has an alias), to each template:

  spec:
    template:
      metadata:
        annotations:
          {{- include "flagrelay.sidecarAnnotations" .Subcharts.flagrelay | nindent 10 }}
      spec:
        initContainers:
          {{- include "flagrelay.sidecar" .Subcharts.flagrelay | nindent 10 }}
        containers:
          - name: app
            env:
              {{- include "flagrelay.sidecarEnv" .Subcharts.flagrelay | nindent 14 }}
        volumes:
          {{- include "flagrelay.sidecarVolumes" .Subcharts.flagrelay | nindent 10 }}

Inside this chart (sidecar.exampleApp) the context is the root `.`.
See examples/app-chart/ for a complete application chart.
*/}}

{{/* The sidecar container, as one list item for initContainers. */}}
{{- define "flagrelay.sidecar" -}}
- {{ include "flagrelay.container" (dict "ctx" . "sidecar" true) | indent 2 | trim }}
{{- end }}

{{/* The volumes the sidecar mounts, as list items for the pod's volumes. */}}
{{- define "flagrelay.sidecarVolumes" -}}
{{ include "flagrelay.volumes" . }}
{{- end }}

{{/* Pod annotations: a checksum that rolls the pods when the relay config changes. */}}
{{- define "flagrelay.sidecarAnnotations" -}}
checksum/flagrelay-config: {{ include "flagrelay.configChecksum" . }}
{{- end }}

{{/* Environment for the application container: where the relay listens. */}}
{{- define "flagrelay.sidecarEnv" -}}
- name: FLAGRELAY_URL
  value: {{ printf "http://%s" (include "flagrelay.hostPort" (list .Values.sidecar.listenHost .Values.ports.http)) | quote }}
{{- end }}
