# The connmon agent image: FROM scratch, one static binary. Build the binary first, then the image,
# from the repository root:
#   cargo xtask dist                      # target/dist/connmon: static (musl), eBPF programs embedded
#   docker build -t connmon:latest .      # or `cargo xtask image` (buildah, offline, the same file)
# then see deploy/kubernetes/ (a DaemonSet). `cargo xtask image` builds this file as it is around
# the same binary and writes an OCI archive; tests/container.rs runs that image under the
# DaemonSet's security context with podman; tests/manifests.rs checks what this file names.
# (With CARGO_TARGET_DIR set, `cargo xtask dist` writes $CARGO_TARGET_DIR/dist/connmon: copy it to
# target/dist/connmon for `docker build`.)
FROM scratch

COPY target/dist/connmon /usr/local/bin/connmon

# Root: loading eBPF programs, setns(2) into other network namespaces and reading other processes'
# /proc entries need root or the capabilities listed in docs/requirements.md (the DaemonSet grants
# exactly those and drops the rest). An image FROM scratch has no users; this says root explicitly.
USER 0

# /metrics, /healthz, /readyz (--web.listen-address, default :9977).
EXPOSE 9977

ENTRYPOINT ["/usr/local/bin/connmon"]
CMD ["run"]
