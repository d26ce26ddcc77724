//! How each kind of hook attaches: the probe table's row type (`ProbeSpec`, `Hook`), the checks
//! made before a load (a helper the kernel lacks, a hooked function's signature in BTF), the
//! attach itself, and the one-line summary of a failure. The verifier's log of a rejected program
//! runs to hundreds of lines; it goes to debug level, and the warning carries only its last
//! meaningful line.
use std::path::Path;

use anyhow::{anyhow, Context as _};
use aya::{
    programs::{
        links::CgroupAttachMode, BtfTracePoint, CgroupSkb, CgroupSkbAttachType, FExit, KProbe, ProgramError, TracePoint,
    },
    Ebpf,
};
use monitor_common::{FdOffsets, SockOffsets, StateTpOffsets, TracepointOffsets, OFFSET_UNKNOWN};

use crate::kernel::{btf, tracefs};

/// Where a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// A BTF-typed raw tracepoint (tp_btf): needs kernel BTF, not tracefs.
    BtfTracepoint(&'static str),
    /// A classic tracepoint: needs tracefs to read its format and attach.
    Tracepoint { group: &'static str, name: &'static str },
    /// One program on several classic tracepoints with the same record layout (all must attach).
    Tracepoints { group: &'static str, names: &'static [&'static str] },
    /// cgroup_skb egress on the cgroup2 root: sees the payload of every process's packets.
    CgroupSkbEgress,
    /// fexit on a kernel function: needs kernel BTF and BPF trampolines (not on every kernel
    /// that has BTF: some refuse them with EPERM or ENOTSUPP).
    FExit(KernelFn),
    /// kprobe on a kernel function's entry: needs CONFIG_KPROBES.
    KProbe(KernelFn),
}

/// A kernel function a program hooks, with the signature it reads its arguments by; checked
/// against kernel BTF before loading, since a kprobe would otherwise read a changed signature's
/// registers as if nothing had changed.
#[derive(Debug, Clone, Copy)]
pub struct KernelFn {
    pub name: &'static str,
    pub ret: &'static str,
    pub args: &'static [&'static str],
}

/// One row of the probe table. Rows with the same `probe` are alternatives tried in order; the
/// first that attaches wins.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    /// The `probe` label of `connmon_probe_up`.
    pub probe: &'static str,
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub hook: Hook,
    /// First mainline kernel with the hook, for the hint when it is missing.
    pub min_kernel: &'static str,
    /// What users get when no alternative of this probe attaches.
    pub fallback: &'static str,
    /// A BPF helper the program calls that is newer than its hook (`bpf_` left out): where
    /// kernel BTF's `enum bpf_func_id` lacks it, the row is skipped without a load.
    pub helper: Option<&'static str>,
}

/// What attaching needs besides the program.
pub(super) struct AttachEnv<'a> {
    pub(super) sock: &'a SockOffsets,
    pub(super) fd: &'a FdOffsets,
    pub(super) tp: &'a TracepointOffsets,
    pub(super) kernel_btf: Option<&'a aya::Btf>,
    pub(super) tracefs: Option<&'a Path>,
    pub(super) cgroup_root: Option<&'a Path>,
}

pub(super) fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec, env: &AttachEnv<'_>) -> anyhow::Result<()> {
    let (sock, tp) = (env.sock, env.tp);
    if sock.state == OFFSET_UNKNOWN || sock.family == OFFSET_UNKNOWN {
        return Err(anyhow!("struct sock offsets unknown (no usable kernel BTF)"));
    }
    let program = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| anyhow!("program {} missing from the eBPF object", spec.program))?;
    match spec.hook {
        Hook::BtfTracepoint(name) => {
            let btf = env.kernel_btf.ok_or_else(|| anyhow!("no kernel BTF at /sys/kernel/btf/vmlinux"))?;
            if name == "inet_sock_set_state" {
                // This variant reads the tuple from the socket rather than from a trace record.
                let tuple =
                    [sock.protocol, sock.dport, sock.daddr, sock.v6_daddr, sock.num, sock.rcv_saddr, sock.v6_rcv_saddr];
                if tuple.contains(&OFFSET_UNKNOWN) {
                    return Err(anyhow!("struct sock address, port or sk_protocol offsets unknown (sk_protocol is a bitfield before Linux 5.6)"));
                }
            }
            let prog: &mut BtfTracePoint = program.try_into()?;
            prog.load(name, btf).context("load")?;
            prog.attach().context("attach")?;
        }
        Hook::Tracepoint { group, name } => {
            let dir = env.tracefs.ok_or_else(|| anyhow!("tracefs unavailable"))?;
            // The record offsets were resolved from this tracepoint's format file; without them the
            // program would read garbage, so refuse to attach.
            let needed = match (group, name) {
                ("sock", "sk_data_ready") => tp.data_ready_skaddr,
                ("tcp", "tcp_retransmit_synack") => tp.synack_skaddr,
                ("sock", "inet_sock_set_state") => state_offsets_complete(&tp.state),
                ("tcp", "tcp_retransmit_skb") => tp.retrans_skaddr.max(tp.retrans_state),
                ("tcp", "tcp_receive_reset") => tp.rx_reset_skaddr,
                ("tcp", "tcp_send_reset") => tp.tx_reset_skaddr,
                ("syscalls", "sys_enter_listen") => {
                    let f = env.fd;
                    [
                        f.task_files,
                        f.files_fdt,
                        f.fdt_fd,
                        f.fdt_max_fds,
                        f.file_inode,
                        f.inode_ino,
                        f.listen_fd,
                        f.listen_backlog,
                    ]
                    .into_iter()
                    .max()
                    .unwrap_or(OFFSET_UNKNOWN)
                }
                _ => 0,
            };
            if needed == OFFSET_UNKNOWN {
                tracefs::read_format(dir, group, name)?;
                return Err(anyhow!("tracepoint {group}:{name} lacks a field the program reads"));
            }
            let prog: &mut TracePoint = program.try_into()?;
            prog.load().context("load")?;
            prog.attach(group, name).context("attach")?;
        }
        Hook::Tracepoints { group, names } => {
            let dir = env.tracefs.ok_or_else(|| anyhow!("tracefs unavailable"))?;
            let f = env.fd;
            let path = [f.task_files, f.files_fdt, f.fdt_fd, f.fdt_max_fds, f.file_private, f.socket_sk, f.accept_ret];
            if path.contains(&OFFSET_UNKNOWN) {
                tracefs::read_format(dir, group, names[0])?;
                return Err(anyhow!("a file-table or socket offset, or the record's `ret`, is unknown on this kernel"));
            }
            let prog: &mut TracePoint = program.try_into()?;
            prog.load().context("load")?;
            for name in names {
                prog.attach(group, name).with_context(|| format!("attach {group}:{name}"))?;
            }
        }
        Hook::CgroupSkbEgress => {
            let root = env.cgroup_root.ok_or_else(|| anyhow!("no cgroup2 filesystem mounted"))?;
            let dir = std::fs::File::open(root).with_context(|| format!("open {}", root.display()))?;
            let prog: &mut CgroupSkb = program.try_into()?;
            prog.load().context("load")?;
            // aya attaches through a bpf_link where the kernel has them (5.7+); cgroup links take
            // no flags and always coexist with other tools' programs (systemd IP accounting, CNI
            // plugins), so "Single" here does not claim the root cgroup.
            prog.attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single).context("attach")?;
        }
        Hook::FExit(f) => {
            let btf = env.kernel_btf.ok_or_else(|| anyhow!("no kernel BTF at /sys/kernel/btf/vmlinux"))?;
            let prog: &mut FExit = program.try_into()?;
            prog.load(f.name, btf).context("load")?;
            prog.attach().context("attach")?;
        }
        Hook::KProbe(f) => {
            let prog: &mut KProbe = program.try_into()?;
            prog.load().context("load")?;
            prog.attach(f.name, 0).context("attach")?;
        }
    }
    Ok(())
}

pub fn hook_name(hook: Hook) -> String {
    match hook {
        Hook::BtfTracepoint(name) => format!("tp_btf/{name}"),
        Hook::Tracepoint { group, name } => format!("tracepoint/{group}/{name}"),
        Hook::Tracepoints { group, names } => {
            names.iter().map(|n| format!("tracepoint/{group}/{n}")).collect::<Vec<_>>().join(" + ")
        }
        Hook::CgroupSkbEgress => "cgroup_skb/egress".to_string(),
        Hook::FExit(f) => format!("fexit/{}", f.name),
        Hook::KProbe(f) => format!("kprobe/{}", f.name),
    }
}

/// OFFSET_UNKNOWN if any field the state program reads is missing, else 0.
fn state_offsets_complete(s: &StateTpOffsets) -> u32 {
    let all = [
        s.skaddr, s.oldstate, s.newstate, s.sport, s.dport, s.family, s.protocol, s.saddr, s.daddr, s.saddr_v6,
        s.daddr_v6,
    ];
    if all.contains(&OFFSET_UNKNOWN) {
        OFFSET_UNKNOWN
    } else {
        0
    }
}

/// The perf event source kprobes attach through; absent when the kernel has no kprobes.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Why a row cannot work on this kernel, found without loading it: a helper the program calls
/// that the kernel lacks, or a hooked function missing or with other argument types.
pub(super) fn precheck(spec: &ProbeSpec, btf: Option<&btf::Btf>) -> anyhow::Result<()> {
    if matches!(spec.hook, Hook::KProbe(_)) && !Path::new(KPROBE_PMU).exists() {
        return Err(anyhow!("the kernel has no kprobes (no {KPROBE_PMU}: built without CONFIG_KPROBES)"));
    }
    let Some(btf) = btf else { return Ok(()) };
    if let Some(helper) = spec.helper {
        if !btf::has_helper(btf, helper) {
            return Err(anyhow!("the kernel has no BPF helper bpf_{helper}"));
        }
    }
    if let Hook::FExit(f) | Hook::KProbe(f) = spec.hook {
        btf::check_signature(btf, f.name, f.ret, f.args)?;
    }
    Ok(())
}

/// A failure in one line, and the verifier's log if the kernel rejected the program. The
/// verifier's last lines are statistics ("processed N insns"); the line before them says why.
pub(super) fn summarize(e: &anyhow::Error) -> (String, Option<String>) {
    for cause in e.chain() {
        if let Some(ProgramError::LoadError { io_error, verifier_log }) = cause.downcast_ref::<ProgramError>() {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                // Refused before the verifier ran (EPERM: no BPF trampolines, or lockdown).
                return (format!("BPF_PROG_LOAD failed: {io_error}"), None);
            }
            let why = verifier_reason(&log);
            let line = match why {
                Some(why) => format!("the verifier rejected it ({io_error}): {why}"),
                None => format!("BPF_PROG_LOAD failed: {io_error}"),
            };
            return (line, Some(log));
        }
    }
    (format!("{e:#}"), None)
}

/// The verifier's reason: its last line that is not a statistic.
pub(super) fn verifier_reason(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|l| {
        !l.is_empty()
            && !l.starts_with("processed ")
            && !l.starts_with("verification time")
            && !l.starts_with("stack depth")
            && !l.starts_with("-- END PROG LOAD LOG --")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_reason_skips_statistics() {
        let log = "0: R1=ctx() R10=fp0\n; let task = ...\n12: (85) call unknown#158\nunknown func #158\nprocessed 12 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 1\n\n";
        assert_eq!(verifier_reason(log), Some("unknown func #158"));
        assert_eq!(verifier_reason("processed 1 insns\n"), None);
        assert_eq!(verifier_reason(""), None);
    }

    #[test]
    fn a_rejected_load_is_summarized_in_one_line() {
        let log = format!("{}unknown func #158\nprocessed 9 insns\n", "0: R1=ctx()\n".repeat(300));
        let err = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
            verifier_log: aya_obj::VerifierLog::new(log.clone()),
        };
        let (line, full) = summarize(&anyhow::Error::from(err).context("load"));
        assert!(!line.contains('\n'), "{line}");
        assert!(line.ends_with("unknown func #158"), "{line}");
        assert_eq!(full.as_deref(), Some(log.as_str()));
        let refused = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        };
        let (line, full) = summarize(&anyhow::Error::from(refused));
        assert!(line.starts_with("BPF_PROG_LOAD failed: Operation not permitted"), "{line}");
        assert_eq!(full, None);
        let (line, full) = summarize(&anyhow!("tracefs unavailable"));
        assert_eq!((line.as_str(), full), ("tracefs unavailable", None));
    }
}
