# The connmon agent image: `docker build -t connmon:latest .` from the repository root, then see
# deploy/kubernetes/ (a DaemonSet). Where no Docker engine runs (as where this project is developed
# and tested), `cargo xtask image` builds the same image with buildah, offline: the same static
# binary, and this file's runtime stage used as it is (xtask/src/image.rs), written as an OCI
# archive. tests/container.rs runs that image under the DaemonSet's security context with podman;
# tests/manifests.rs checks that the paths and commands named here exist in the repository.

# --- builder: Debian 12, as the project's own setup expects ------------------------------------
FROM rust:1.95-bookworm AS builder

WORKDIR /src
COPY . .

# `cargo xtask setup` installs what the build needs, as on a developer's machine (docs/setup.md):
# Debian packages (LLVM 22 from bookworm-security; it also installs the test and bench groups,
# which this stage does not use), the dated nightly pinned in monitor-ebpf/rust-toolchain.toml
# with rust-src, the musl target (with Debian's musl-tools), bpf-linker built against LLVM 22
# (about 4 minutes) and kubernetes-validate. --no-tracefs: an image build cannot mount tracefs
# (no CAP_SYS_ADMIN), and only a running agent needs it (the agent mounts it itself).
RUN cargo xtask setup --no-tracefs

# The static release binary (musl; connmon's build script, monitor/build.rs, builds the eBPF
# programs with the pinned nightly and bpf-linker and embeds them): the same build `cargo xtask
# image` makes, stripped of symbols as it strips them (`install -s`).
RUN cargo xtask image --binary-only \
 && install -D -s -m 0755 target/x86_64-unknown-linux-musl/release/connmon /usr/local/bin/connmon

# --- runtime: the binary alone (static: no C library, no shell) -----------------------------------
FROM scratch

COPY --from=builder /usr/local/bin/connmon /usr/local/bin/connmon

# Root: loading eBPF programs, setns(2) into other network namespaces and reading other processes'
# /proc entries need root or the capabilities listed in docs/requirements.md (the DaemonSet grants
# exactly those and drops the rest). An image FROM scratch has no users; this says root explicitly.
USER 0

# /metrics, /healthz, /readyz (--web.listen-address, default :9977).
EXPOSE 9977

ENTRYPOINT ["/usr/local/bin/connmon"]
CMD ["run"]
