//! Tests for the netstat/snmp pair parser, using files captured from a 6.18 kernel.

use super::*;

/// `/proc/net/netstat` as captured.
const NETSTAT: &str = r#"TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow TSEcrRejected PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks TCPHPAcks TCPRenoRecovery TCPSackRecovery TCPSACKReneging TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo TCPPartialUndo TCPDSACKUndo TCPLossUndo TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans TCPSlowStartRetrans TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRenoRecoveryFail TCPSackRecoveryFail TCPRcvCollapsed TCPBacklogCoalesce TCPDSACKOldSent TCPDSACKOfoSent TCPDSACKRecv TCPDSACKOfoRecv TCPAbortOnData TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures TCPMemoryPressuresChrono TCPSACKDiscard TCPDSACKIgnoredOld TCPDSACKIgnoredNoUndo TCPSpuriousRTOs TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPSackShifted TCPSackMerged TCPSackShiftFallback TCPBacklogDrop PFMemallocDrop TCPMinTTLDrop TCPDeferAcceptDrop IPReversePathFilter TCPTimeWaitOverflow TCPReqQFullDoCookies TCPReqQFullDrop TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge TCPChallengeACK TCPSYNChallenge TCPFastOpenActive TCPFastOpenActiveFail TCPFastOpenPassive TCPFastOpenPassiveFail TCPFastOpenListenOverflow TCPFastOpenCookieReqd TCPFastOpenBlackhole TCPSpuriousRtxHostQueues BusyPollRxPackets TCPAutoCorking TCPFromZeroWindowAdv TCPToZeroWindowAdv TCPWantZeroWindowAdv TCPSynRetrans TCPOrigDataSent TCPHystartTrainDetect TCPHystartTrainCwnd TCPHystartDelayDetect TCPHystartDelayCwnd TCPACKSkippedSynRecv TCPACKSkippedPAWS TCPACKSkippedSeq TCPACKSkippedFinWait2 TCPACKSkippedTimeWait TCPACKSkippedChallenge TCPWinProbe TCPKeepAlive TCPMTUPFail TCPMTUPSuccess TCPDelivered TCPDeliveredCE TCPAckCompressed TCPZeroWindowDrop TCPRcvQDrop TCPWqueueTooBig TCPFastOpenPassiveAltKey TcpTimeoutRehash TcpDuplicateDataRehash TCPDSACKRecvSegs TCPDSACKIgnoredDubious TCPMigrateReqSuccess TCPMigrateReqFailure TCPPLBRehash TCPAORequired TCPAOBad TCPAOKeyNotFound TCPAOGood TCPAODroppedIcmps
TcpExt: 0 0 0 0 0 0 0 0 0 0 12 0 0 0 0 0 0 0 0 3 0 10 0 0 169 94 163 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 2 1 0 0 0 0 94 10 0 1 0 2 11 0 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 6357 0 0 0 0 0 0 0 0 0 0 0 0 2 0 270 93 93 192 0 1068 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1093 0 0 0 0 0 0 2 0 1 0 0 0 0 0 0 0 0 0
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts ReasmOverlaps
IpExt: 0 0 0 0 0 0 280753028 439431 0 0 0 0 0 10361 0 0 0 0
MPTcpExt: MPCapableSYNRX MPCapableSYNTX MPCapableSYNACKRX MPCapableACKRX MPCapableFallbackACK MPCapableFallbackSYNACK MPCapableSYNTXDrop MPCapableSYNTXDisabled MPCapableEndpAttempt MPFallbackTokenInit MPTCPRetrans MPJoinNoTokenFound MPJoinSynRx MPJoinSynBackupRx MPJoinSynAckRx MPJoinSynAckBackupRx MPJoinSynAckHMacFailure MPJoinAckRx MPJoinAckHMacFailure MPJoinRejected MPJoinSynTx MPJoinSynTxCreatSkErr MPJoinSynTxBindErr MPJoinSynTxConnectErr DSSNotMatching DSSCorruptionFallback DSSCorruptionReset InfiniteMapTx InfiniteMapRx DSSNoMatchTCP DataCsumErr OFOQueueTail OFOQueue OFOMerge NoDSSInWindow DuplicateData AddAddr AddAddrTx AddAddrTxDrop EchoAdd EchoAddTx EchoAddTxDrop PortAdd AddAddrDrop MPJoinPortSynRx MPJoinPortSynAckRx MPJoinPortAckRx MismatchPortSynRx MismatchPortAckRx RmAddr RmAddrDrop RmAddrTx RmAddrTxDrop RmSubflow MPPrioTx MPPrioRx MPFailTx MPFailRx MPFastcloseTx MPFastcloseRx MPRstTx MPRstRx SubflowStale SubflowRecover SndWndShared RcvWndShared RcvWndConflictUpdate RcvWndConflict MPCurrEstab Blackhole MPCapableDataFallback MD5SigFallback DssFallback SimultConnectFallback FallbackFailed WinProbe
MPTcpExt: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
"#;

/// The first lines of `/proc/net/snmp` as captured (Tcp MaxConn is the signed -1).
const SNMP: &str = r#"Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 10361 0 0 0 0 0 10361 6396 0 0 0 0 0 0 0 0 0 6396
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps
Icmp: 1 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
IcmpMsg: InType3
IcmpMsg: 1
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 26 2 0 11 0 10311 6358 1 0 16 0
"#;

#[test]
fn parses_captured_netstat() {
    let all = parse_pairs(NETSTAT).unwrap();
    assert_eq!(all.keys().map(String::as_str).collect::<Vec<_>>(), ["IpExt", "MPTcpExt", "TcpExt"]);
    let tcp = &all["TcpExt"];
    assert_eq!(tcp.len(), 135);
    assert_eq!(tcp["TW"], 12);
    assert_eq!(tcp["DelayedACKs"], 3);
    assert_eq!(tcp["TCPHPHits"], 169);
    assert_eq!(tcp["TCPOrigDataSent"], 1068);
    assert_eq!(tcp["TCPAODroppedIcmps"], 0);
    assert_eq!(all["IpExt"].len(), 18);
    assert_eq!(all["MPTcpExt"].len(), 76);
}

#[test]
fn tcp_ext_has_every_exported_counter() {
    let tcp = tcp_ext(NETSTAT).unwrap();
    for name in TCP_EXT_COUNTERS {
        assert_eq!(tcp.get(*name), Some(&0), "{name}");
    }
    assert_eq!(tcp["TCPPureAcks"], 94);
}

#[test]
fn parses_snmp_including_signed_values() {
    let all = parse_pairs(SNMP).unwrap();
    assert_eq!(all["Tcp"]["MaxConn"], u64::MAX);
    assert_eq!(all["Tcp"]["RtoMax"], 120000);
    assert_eq!(all["Ip"]["DefaultTTL"], 64);
    assert_eq!(all["IcmpMsg"]["InType3"], 1);
    assert!(tcp_ext(SNMP).unwrap_err().to_string().contains("no TcpExt section"));
}

fn err(text: &str) -> String {
    let e = parse_pairs(text).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn malformed_text_is_an_error_naming_the_prefix() {
    let e = err("TcpExt: A B\nTcpExt: 1\n");
    assert!(e.starts_with("TcpExt:") && e.contains("2 names but 1 values"), "{e}");
    let e = err("TcpExt: A B\nTcpExt: 1 x\n");
    assert!(e.starts_with("TcpExt:") && e.contains("\"x\""), "{e}");
    let e = err("TcpExt: A B\nTcpExt: 1 2\nIpExt: C\n");
    assert!(e.starts_with("IpExt:") && e.contains("odd number"), "{e}");
    let e = err("TcpExt: A B\nIpExt: C\nTcpExt: 1 2\nIpExt: 3\n");
    assert!(e.starts_with("TcpExt:") && e.contains("not followed"), "{e}");
    let e = err("TcpExt: A\nTcpExt: 99999999999999999999999\n");
    assert!(e.starts_with("TcpExt:"), "{e}");
    let e = err("no colon here\n");
    assert!(e.contains("line 1"), "{e}");
    // Truncating anywhere gives an error or a prefix of the data, never a panic.
    for n in 0..NETSTAT.len() {
        let _ = parse_pairs(&NETSTAT[..n]);
    }
    assert!(parse_pairs("").unwrap().is_empty());
    assert!(tcp_ext("").is_err());
}

#[test]
fn running_kernel_reports_every_exported_counter() {
    let tcp = read_tcp_ext().unwrap();
    for name in TCP_EXT_COUNTERS {
        assert!(tcp.contains_key(*name), "TcpExt lacks {name}");
    }
}
