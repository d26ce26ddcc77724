//! What each kernel of the matrix must have: the program every probe attaches through, as the
//! matrix measured it (docs/kernels.md shows the same table). A probe down, or up through another
//! program, is a regression: either the code broke a kernel or this table and the docs are stale.

/// Probe → program on the newest kernels (6.6 and later: every hook exists).
const CURRENT: &[(&str, &str)] = &[
    ("listen_peak", "sk_data_ready_btf"),
    ("synack_retransmit", "tcp_retransmit_synack"),
    ("pools", "inet_sock_set_state_btf"),
    ("connect_retransmit", "tcp_retransmit_skb_btf"),
    ("resets_received", "tcp_receive_reset_btf"),
    ("resets_sent", "tcp_send_reset_btf"),
    ("accept_wait", "accept_exit"),
    ("listen_backlog", "listen_enter"),
    ("protocol", "classify_egress"),
];

/// Where a series differs from CURRENT.
const DIFFERENCES: &[(&str, &[(&str, &str)])] = &[
    // No sock:sk_data_ready before 6.6; no bpf_get_current_task_btf (the tp_btf pools program's
    // helper) before 5.11.
    ("5.10", &[("listen_peak", "queued_child_fexit"), ("pools", "inet_sock_set_state")]),
    ("6.1", &[("listen_peak", "queued_child_fexit")]),
];

pub struct Expected {
    pub programs: Vec<(&'static str, &'static str)>,
}

impl Expected {
    /// For a series name of `matrix::SERIES`, or "host" (a current kernel).
    pub fn of(series: &str) -> Expected {
        let diff = DIFFERENCES.iter().find(|(s, _)| *s == series).map_or(&[][..], |(_, d)| *d);
        let programs = CURRENT
            .iter()
            .map(|&(probe, program)| (probe, diff.iter().find(|(p, _)| *p == probe).map_or(program, |(_, g)| *g)))
            .collect();
        Expected { programs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_override_current() {
        let e = Expected::of("5.10");
        assert!(e.programs.contains(&("listen_peak", "queued_child_fexit")));
        assert!(e.programs.contains(&("pools", "inet_sock_set_state")));
        assert!(e.programs.contains(&("protocol", "classify_egress")));
        assert_eq!(Expected::of("host").programs, CURRENT);
        for (series, diff) in DIFFERENCES {
            for (probe, _) in *diff {
                assert!(CURRENT.iter().any(|(p, _)| p == probe), "{series}: unknown probe {probe}");
            }
        }
    }
}
