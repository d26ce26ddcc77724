# The connmon agent image: `docker build -t connmon:latest .` from the repository root, then see
# deploy/kubernetes/ (a DaemonSet). No Docker engine runs where this project is developed and
# tested, so this file has not been built there: tests/manifests.rs only checks that the paths and
# commands it names exist in the repository.

# --- builder: Debian 12, as the project's own setup expects ------------------------------------
FROM rust:1.95-bookworm AS builder

WORKDIR /src
COPY . .

# `cargo xtask setup` installs what the build needs, as on a developer's machine (README "Quick
# start"): Debian packages (LLVM 22 from bookworm-security; it also installs the test and bench
# groups, which this stage does not use), the dated nightly pinned in monitor-ebpf/rust-toolchain.toml
# with rust-src, bpf-linker built against LLVM 22 (about 4 minutes) and kubernetes-validate. --no-tracefs: an image build cannot
# mount tracefs (no CAP_SYS_ADMIN), and only a running agent needs it (the agent mounts it itself).
RUN cargo xtask setup --no-tracefs

# connmon's build script (monitor/build.rs) builds the eBPF programs (pinned nightly, bpf-linker) and embeds them.
RUN cargo build --release -p connmon \
 && install -D -m 0755 target/release/connmon /usr/local/bin/connmon

# --- runtime: glibc and libgcc only ----------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12

COPY --from=builder /usr/local/bin/connmon /usr/local/bin/connmon

# Root: loading eBPF programs, setns(2) into other network namespaces and reading other processes'
# /proc entries need root or the capabilities listed in the README (the DaemonSet grants exactly
# those and drops the rest). distroless's default user is root; this says so explicitly.
USER 0

# /metrics, /healthz, /readyz (--web.listen-address, default :9977).
EXPOSE 9977

ENTRYPOINT ["/usr/local/bin/connmon"]
CMD ["run"]
