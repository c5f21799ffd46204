//! The server against a raw-socket client: handshake variants, every
//! command in every reply mode, meta contexts, many clients.

mod helpers;

use std::sync::Arc;

use corio_nbd::proto::*;
use corio_nbd::storage::Storage;
use helpers::inproc::*;

const MIB: u64 = 1 << 20;

#[test]
fn info_then_go_simple_read_write() {
    let srv = start(export("disk", memory(8 * MIB)), |_| {});
    let mut c = srv.connect();
    c.hello();
    c.option(OptionRequest::Info(ExportQuery {
        name: "disk",
        requests: WireList::Items(&[info::NAME, info::DESCRIPTION, info::BLOCK_SIZE]),
    }));
    let r = c.opt_replies();
    let bodies: Vec<&str> = r.iter().map(|r| r.body.as_str()).collect();
    assert!(bodies[0].contains("Name(\"disk\")"), "{bodies:?}");
    assert!(bodies[1].contains("test export disk"), "{bodies:?}");
    assert!(
        bodies[2].contains("min: 1, preferred: 4096, max: 33554432"),
        "{bodies:?}"
    );
    assert!(bodies[3].contains("size: 8388608"), "{bodies:?}");
    assert_eq!(r[4].reply_type, rep::ACK);
    // Still in option haggling: GO.
    c.option(OptionRequest::Go(ExportQuery {
        name: "disk",
        requests: WireList::Items(&[]),
    }));
    let r = c.opt_replies();
    assert_eq!(r.last().unwrap().reply_type, rep::ACK);
    c.mode = Mode::Simple;
    // transmission by hand since go() redoes the handshake
    let mut c2 = srv.connect();
    let (size, flags) = c2.go("disk", Mode::Simple);
    assert_eq!(size, 8 * MIB);
    assert!(flags.contains(TransmissionFlags::SEND_FLUSH | TransmissionFlags::SEND_TRIM));
    assert!(!flags.contains(TransmissionFlags::READ_ONLY));
    assert!(
        !flags.contains(TransmissionFlags::SEND_DF),
        "no DF without structured replies"
    );
    let data = pattern(7, 10000);
    assert_eq!(c2.write(12345, &data), 0);
    assert_eq!(c2.read(12345, 10000).unwrap(), data);
    assert_eq!(c2.read(0, 100).unwrap(), vec![0; 100]);
    let f = c2.request(Command::Flush, CmdFlags::empty(), 0, 0, &[]);
    assert_eq!(c2.status(f), 0);
    drop(c);
    drop(c2);
    srv.stop().unwrap();
}

#[test]
fn export_name_with_and_without_zeroes() {
    let srv = start(export("", memory(MIB)), |_| {});
    for no_zeroes in [false, true] {
        let mut c = srv.connect();
        c.greeting();
        c.client_flags(if no_zeroes { 3 } else { 1 });
        c.option(OptionRequest::ExportName(""));
        let n = ExportNameReply::wire_len(!no_zeroes);
        let reply = c.read_data(n);
        assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), MIB);
        assert_eq!(reply.len(), n);
        c.start_transmission(Mode::Simple);
        // Transmission works.
        assert_eq!(c.write(0, b"abc"), 0);
        assert_eq!(c.read(0, 3).unwrap(), b"abc");
    }
    // An unknown name has no error reply: the server hangs up.
    let mut c = srv.connect();
    c.hello();
    c.option(OptionRequest::ExportName("nope"));
    assert!(c.closed_by_server());
}

#[test]
fn list_abort_unknown_option_and_errors() {
    let srv = start(export("a", memory(MIB)), |_| {});
    let mut c = srv.connect();
    c.hello();
    c.option(OptionRequest::List);
    let r = c.opt_replies();
    assert_eq!(r.len(), 2);
    assert!(r[0].body.contains("name: \"a\""), "{r:?}");
    // Unknown option: NBD_REP_ERR_UNSUP, and the session goes on.
    let mut raw = Vec::new();
    raw.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    raw.extend_from_slice(&77u32.to_be_bytes());
    raw.extend_from_slice(&3u32.to_be_bytes());
    raw.extend_from_slice(b"xyz");
    c.send(&raw);
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::UNSUP.0);
    // STARTTLS without TLS: policy.
    c.option(OptionRequest::StartTls);
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::POLICY.0);
    // Unknown export in INFO/GO: UNKNOWN, and the session goes on.
    c.option(OptionRequest::Go(ExportQuery {
        name: "b",
        requests: WireList::Items(&[]),
    }));
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::UNKNOWN.0);
    // SET_META_CONTEXT before structured replies: INVALID.
    let q = MetaContextQuery {
        export: "a",
        queries: MetaQueries::Items(&[BASE_ALLOCATION]),
    };
    c.option(OptionRequest::SetMetaContext(q));
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::INVALID.0);
    c.option(OptionRequest::StructuredReply);
    assert_eq!(c.opt_reply().unwrap().reply_type, rep::ACK);
    c.option(OptionRequest::StructuredReply);
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::INVALID.0);
    // Option data where none is allowed: INVALID.
    let mut raw = Vec::new();
    raw.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    raw.extend_from_slice(&opt::LIST.to_be_bytes());
    raw.extend_from_slice(&1u32.to_be_bytes());
    raw.push(0);
    c.send(&raw);
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::INVALID.0);
    c.option(OptionRequest::Abort);
    assert_eq!(c.opt_reply().unwrap().reply_type, rep::ACK);
    assert!(c.closed_by_server());
}

#[test]
fn meta_contexts_list_and_set() {
    let mut e = export("m", memory(MIB));
    e.allocation_depth = true;
    let srv = start(e, |_| {});
    let mut c = srv.connect();
    c.hello();
    let all = MetaContextQuery {
        export: "m",
        queries: MetaQueries::Items(&[]),
    };
    c.option(OptionRequest::ListMetaContext(all));
    let r = c.opt_replies();
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(r[0].body.contains("base:allocation") && r[1].body.contains("qemu:allocation-depth"));
    let ns = MetaContextQuery {
        export: "m",
        queries: MetaQueries::Items(&["qemu:", "nope:x"]),
    };
    c.option(OptionRequest::ListMetaContext(ns));
    let r = c.opt_replies();
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r[0].body.contains("qemu:allocation-depth"));
    drop(c);
    // Both contexts in one block status reply, ids as set.
    let mut c = srv.connect();
    c.go_with(
        "m",
        Mode::Structured,
        &[BASE_ALLOCATION, "qemu:allocation-depth"],
        &[],
    );
    assert_eq!(c.write(65536, &[1; 100]), 0);
    let bs = c.request(Command::BlockStatus, CmdFlags::empty(), 0, MIB, &[]);
    let v = c.chunks();
    assert_eq!(v.len(), 2, "{v:?}");
    let Msg::Chunk {
        cookie,
        kind: Kind::Status { id: 0, extents },
        done: false,
        ..
    } = &v[0]
    else {
        panic!("{v:?}")
    };
    assert_eq!(*cookie, bs);
    assert_eq!(extents, &vec![(65536, 3), (65536, 0), (MIB - 131072, 3)]);
    let Msg::Chunk {
        kind: Kind::Status { id: 1, extents },
        done: true,
        ..
    } = &v[1]
    else {
        panic!("{v:?}")
    };
    assert_eq!(extents, &vec![(MIB, 1)]);
}

#[test]
fn structured_reads_holes_df_and_block_status() {
    let srv = start(export("", memory(4 * MIB)), |_| {});
    let mut c = srv.connect();
    let (_, flags) = c.go("", Mode::Structured);
    assert!(flags.contains(TransmissionFlags::SEND_DF | TransmissionFlags::SEND_FAST_ZERO));
    let data = pattern(3, 65536);
    assert_eq!(c.write(MIB, &data), 0);
    // Sparse read: hole, data, hole.
    let rc = c.request(
        Command::Read,
        CmdFlags::empty(),
        MIB - 65536,
        3 * 65536,
        &[],
    );
    let v = c.chunks();
    let kinds: Vec<_> = v
        .iter()
        .map(|m| match m {
            Msg::Chunk { cookie, kind, .. } => {
                assert_eq!(*cookie, rc);
                kind.clone()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            Kind::Hole {
                offset: MIB - 65536,
                length: 65536
            },
            Kind::Data {
                offset: MIB,
                data: data.clone()
            },
            Kind::Hole {
                offset: MIB + 65536,
                length: 65536
            },
        ]
    );
    // DF: one data chunk.
    let _ = c.request(Command::Read, CmdFlags::DF, MIB - 65536, 3 * 65536, &[]);
    let v = c.chunks();
    assert_eq!(v.len(), 1);
    let Msg::Chunk {
        kind: Kind::Data { data: d, .. },
        ..
    } = &v[0]
    else {
        panic!("{v:?}")
    };
    assert_eq!(&d[65536..131072], &data[..]);
    // Errors are error chunks in structured mode.
    let w = c.request(Command::Read, CmdFlags::empty(), 4 * MIB, 1, &[]);
    assert_eq!(c.status(w), Errno::EINVAL.0);
    // REQ_ONE: one extent.
    let _ = c.request(Command::BlockStatus, CmdFlags::REQ_ONE, 0, 4 * MIB, &[]);
    let v = c.chunks();
    let Msg::Chunk {
        kind: Kind::Status { extents, .. },
        ..
    } = &v[0]
    else {
        panic!("{v:?}")
    };
    assert_eq!(extents, &vec![(MIB, 3)]);
}

#[test]
fn trim_zeroes_cache_fua_and_extended_headers() {
    let mem = memory(4 * MIB);
    let mut e = export("x", mem.clone());
    e.discard = corio_nbd::server::Discard::Unmap;
    let srv = start(e, |_| {});
    let mut c = srv.connect();
    let (_, flags) = c.go("x", Mode::Extended);
    assert!(flags.contains(TransmissionFlags::BLOCK_STATUS_PAYLOAD));
    assert_eq!(c.write(0, &pattern(1, 3 * 65536)), 0);
    let w = c.request(Command::Write, CmdFlags::FUA, 2 * MIB, 5, b"hello");
    assert_eq!(c.status(w), 0);
    let t = c.request(Command::Trim, CmdFlags::empty(), 0, 65536, &[]);
    assert_eq!(c.status(t), 0);
    let z = c.request(Command::WriteZeroes, CmdFlags::NO_HOLE, 65536, 100, &[]);
    assert_eq!(c.status(z), 0);
    let z = c.request(
        Command::WriteZeroes,
        CmdFlags::FAST_ZERO,
        131072,
        65536,
        &[],
    );
    assert_eq!(c.status(z), 0);
    let k = c.request(Command::Cache, CmdFlags::empty(), 0, MIB, &[]);
    assert_eq!(c.status(k), 0);
    let got = c.read(0, 3 * 65536).unwrap();
    let mut want = pattern(1, 3 * 65536);
    want[..65536].fill(0);
    want[65536..65636].fill(0);
    want[131072..].fill(0);
    assert_eq!(got, want);
    assert_eq!(c.read(2 * MIB, 5).unwrap(), b"hello");
    // 64-bit extents, with a payload choosing the context.
    let mut payload = Vec::new();
    BlockStatusPayload {
        effect_length: 4 * MIB,
        ids: WireList::Items(&[0]),
    }
    .encode(&mut payload);
    let len = payload.len() as u64;
    let _ = c.request(
        Command::BlockStatus,
        CmdFlags::PAYLOAD_LEN,
        0,
        len,
        &payload,
    );
    let v = c.chunks();
    let Msg::Chunk {
        kind: Kind::Status { extents, .. },
        offset: 0,
        ..
    } = &v[0]
    else {
        panic!("{v:?}")
    };
    assert_eq!(extents[0], (65536, 3));
    assert_eq!(extents.iter().map(|e| e.0).sum::<u64>(), 4 * MIB);
    // Extended success replies are NONE chunks; the storage saw it all.
    let f = c.request(Command::Flush, CmdFlags::empty(), 0, 0, &[]);
    assert_eq!(c.status(f), 0);
    assert_eq!(mem.read_at(2 * MIB, vec![0; 5]).unwrap(), b"hello");
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let mem = Arc::new(corio_nbd::storage::memory::MemoryStorage::new(MIB, true));
    let srv = start(export("ro", mem), |_| {});
    let mut c = srv.connect();
    let (_, flags) = c.go("ro", Mode::Simple);
    assert!(flags.contains(TransmissionFlags::READ_ONLY));
    assert!(!flags.contains(TransmissionFlags::SEND_TRIM));
    assert_eq!(c.write(0, b"no"), Errno::EPERM.0);
    let t = c.request(Command::Trim, CmdFlags::empty(), 0, 512, &[]);
    assert_eq!(c.status(t), Errno::EPERM.0);
    let z = c.request(Command::WriteZeroes, CmdFlags::empty(), 0, 512, &[]);
    assert_eq!(c.status(z), Errno::EPERM.0);
    assert_eq!(c.read(0, 4).unwrap(), vec![0; 4]);
}

fn many_clients(iothreads: usize, clients: usize) {
    let mem = memory(clients as u64 * 65536);
    let srv = start(export("", mem.clone()), |c| c.iothreads = iothreads);
    let path = srv.path.clone();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path);
                let mode = [Mode::Simple, Mode::Structured, Mode::Extended][i % 3];
                c.go("", mode);
                let data = pattern(i as u8, 65536);
                // 16 writes in flight, then read back.
                let cookies: Vec<_> = (0..16)
                    .map(|k| {
                        let off = i as u64 * 65536 + k * 4096;
                        let d = &data[k as usize * 4096..(k as usize + 1) * 4096];
                        c.request(Command::Write, CmdFlags::empty(), off, 4096, d)
                    })
                    .collect();
                let mut seen: Vec<u64> = (0..16)
                    .map(|_| match c.reply().unwrap() {
                        Msg::Simple { cookie, error: 0 } => cookie,
                        Msg::Chunk {
                            cookie,
                            kind: Kind::None,
                            done: true,
                            ..
                        } => cookie,
                        other => panic!("{other:?}"),
                    })
                    .collect();
                seen.sort_unstable();
                let mut want = cookies.clone();
                want.sort_unstable();
                assert_eq!(seen, want, "each request answered once");
                assert_eq!(c.read(i as u64 * 65536, 65536).unwrap(), data);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    for i in 0..clients {
        let got = mem.read_at(i as u64 * 65536, vec![0; 65536]).unwrap();
        assert_eq!(got, pattern(i as u8, 65536));
    }
    assert_eq!(
        srv.handle
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        clients as u64
    );
    srv.stop().unwrap();
}

#[test]
fn many_clients_main_loop() {
    many_clients(0, 24);
}

#[test]
fn many_clients_two_iothreads() {
    let n = if helpers::thorough() { 1000 } else { 48 };
    many_clients(2, n);
}
