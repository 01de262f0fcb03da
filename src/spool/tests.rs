use super::envelope::tests_support::envelope;
use super::*;

fn small() -> Options {
    Options {
        segment_bytes: 4096,
        compact_every: Duration::from_secs(3600),
    }
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn store_update_remove_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope("AAAA0001");
    spool.store(&env, b"hello").unwrap();
    spool.store(&envelope("AAAA0002"), b"second").unwrap();
    let mut changed = env.clone();
    changed.recipients[0].state = RcptState::Delivered;
    spool.update(&changed).unwrap();
    spool.remove("AAAA0002").unwrap();
    assert_eq!(spool.load("AAAA0001").unwrap(), changed);
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.list(), vec![changed.clone()]);
    assert_eq!(spool.read_message("AAAA0001").unwrap(), b"hello");
    assert_eq!(spool.recovery().queued, 1);
    assert!(spool.recovery().dropped.is_empty());
    spool.remove("AAAA0001").unwrap();
    assert!(spool.is_empty());
    assert_eq!(
        spool.update(&changed).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        spool.remove("AAAA0001").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("VERSION")).unwrap(),
        "2\n"
    );
}

#[test]
fn files_and_directories_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("s")).unwrap();
    spool.store(&envelope("AAAA0001"), b"x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let s = dir.path().join("s");
    assert_eq!(mode(&s), 0o700);
    assert_eq!(mode(&s.join("segments")), 0o700);
    assert_eq!(mode(&newest_segment(&s)), 0o600);
    assert_eq!(mode(&s.join("VERSION")), 0o600);
}

#[test]
fn a_torn_tail_is_cut_off_and_reported_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    spool.store(&envelope("AAAA0001"), b"kept").unwrap();
    spool.store(&envelope("AAAA0002"), b"torn").unwrap();
    drop(spool);
    let seg = newest_segment(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    File::options()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<String> = spool.list().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["AAAA0001"]);
    let dropped = spool.recovery().dropped;
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].why, DropReason::TornTail);
    spool.store(&envelope("AAAA0003"), b"after").unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.len(), 2);
    assert!(
        spool.recovery().dropped.is_empty(),
        "the tail was cut off for good"
    );
    assert_eq!(spool.read_message("AAAA0003").unwrap(), b"after");
}

#[test]
fn a_segment_cut_inside_its_header_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), small()).unwrap();
    for i in 0..12 {
        spool
            .store(&envelope(&format!("AAAA{i:04}")), &[b'z'; 500])
            .unwrap();
    }
    drop(spool);
    // A crash while the newest segment was being created: 5 bytes of its header.
    let seg = newest_segment(dir.path());
    let next = seg.with_file_name(format!(
        "{:016}.seg",
        log::segment_number(seg.file_name().unwrap().to_str().unwrap()).unwrap() + 1
    ));
    fs::write(&next, &SEGMENT_HEADER[..5]).unwrap();
    let spool = Spool::open_with(dir.path(), small()).unwrap();
    assert_eq!(spool.len(), 12);
    spool.store(&envelope("AFTER"), b"after").unwrap();
    drop(spool);
    let spool = Spool::open_with(dir.path(), small()).unwrap();
    assert_eq!(spool.len(), 13);
    assert_eq!(spool.read_message("AFTER").unwrap(), b"after");
    assert_eq!(&fs::read(&next).unwrap()[..16], SEGMENT_HEADER);
}

#[test]
fn a_damaged_record_in_the_middle_costs_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for (i, body) in [b"first", b"broke", b"third"].iter().enumerate() {
        spool
            .store(&envelope(&format!("AAAA000{i}")), *body)
            .unwrap();
    }
    drop(spool);
    let seg = newest_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let at = bytes.windows(5).position(|w| w == b"broke").unwrap();
    bytes[at] = b'X';
    fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<String> = spool.list().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["AAAA0000", "AAAA0002"]);
    assert_eq!(spool.read_message("AAAA0002").unwrap(), b"third");
    let dropped = spool.recovery().dropped;
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].why, DropReason::Damaged);
}

#[test]
fn compaction_deletes_dead_segments_and_moves_the_living_forward() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), small()).unwrap();
    let body = vec![b'x'; 500];
    for i in 0..40 {
        spool.store(&envelope(&format!("M{i:04}")), &body).unwrap();
    }
    assert!(spool.segments().len() >= 4, "{:?}", spool.segments());
    // One message stays deferred; every other one is delivered.
    for i in 1..40 {
        spool.remove(&format!("M{i:04}")).unwrap();
    }
    spool.store(&envelope("LAST"), b"rotate").unwrap();
    spool.compact().unwrap();
    let segs = spool.segments();
    assert!(segs.len() <= 2, "old segments must go: {segs:?}");
    assert_eq!(spool.read_message("M0000").unwrap(), body);
    let on_disk = fs::read_dir(dir.path().join("segments")).unwrap().count();
    assert_eq!(on_disk, segs.len());
    drop(spool);
    let spool = Spool::open_with(dir.path(), small()).unwrap();
    let ids: Vec<String> = spool.list().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["LAST", "M0000"]);
    assert_eq!(spool.read_message("M0000").unwrap(), body);
    assert!(spool.recovery().dropped.is_empty());
}

#[test]
fn concurrent_stores_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    spool
                        .store(&envelope(&format!("T{t:02}M{i:02}")), &[b'm'; 4096])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(spool.len(), 500);
    let flushes = spool.flushes();
    println!("500 stores from 20 threads: {flushes} flushes");
    assert!(flushes < 500, "{flushes} flushes for 500 stores");
}

/// An envelope file as written before `Notify` and `envelope.rs` existed.
const OLD_ENVELOPE: &str = include_str!("../../tests/fixtures/envelope-v1.env");

#[test]
fn a_spool_in_the_earlier_layout_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = "6A1B2C3D0E0F1A2B";
    for sub in ["tmp/sub", "queue"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    fs::write(d.join(format!("queue/{id}.env")), OLD_ENVELOPE).unwrap();
    fs::write(d.join(format!("queue/{id}.msg")), b"old body").unwrap();
    fs::write(d.join("queue/AAAA0003.msg"), b"no envelope").unwrap();
    fs::write(d.join("queue/BAD1.env"), b"{not json").unwrap();
    fs::write(d.join("queue/BAD1.msg"), b"x").unwrap();
    fs::write(d.join("tmp/AAAA0002.msg"), b"partial").unwrap();
    let spool = Spool::open(d).unwrap();
    let env = spool.load(id).unwrap();
    assert_eq!(env.sender, "alice@example.org");
    assert_eq!(env.attempts, 3);
    assert_eq!(spool.read_message(id).unwrap(), b"old body");
    let imported = spool.recovery().imported;
    assert_eq!(imported.messages, 1);
    // tmp/AAAA0002.msg, tmp/sub (set aside), queue/AAAA0003.msg without envelope
    assert_eq!(imported.discarded_partial, 3);
    assert_eq!(imported.corrupt, ["BAD1"]);
    assert!(d.join("corrupt/BAD1.env").exists());
    assert!(d.join("corrupt/sub").exists());
    assert!(!d.join("queue").exists() && !d.join("tmp").exists());
    drop(spool);
    assert_eq!(Spool::open(d).unwrap().list(), vec![env]);
}

#[test]
fn a_spool_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("VERSION"), "3\n").unwrap();
    let e = Spool::open(dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("has format 3; this release reads format 2"),
        "{e}"
    );
    fs::write(dir.path().join("VERSION"), "two\n").unwrap();
    let e = Spool::open(dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("does not hold a spool format number"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path()).unwrap());
    let seg = newest_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    bytes[15] = 9;
    fs::write(&seg, bytes).unwrap();
    let e = Spool::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("has format 9"), "{e}");
}

#[test]
fn odd_entries_in_the_segments_directory_are_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path()).unwrap());
    let segs = dir.path().join("segments");
    fs::create_dir(segs.join("0000000000000099.seg")).unwrap();
    fs::write(segs.join("stray"), b"x").unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    spool.store(&envelope("AAAA0001"), b"x").unwrap();
    assert!(dir.path().join("corrupt/stray").exists());
    assert!(dir.path().join("corrupt/0000000000000099.seg").exists());
}

#[test]
fn bad_ids_never_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for id in ["../../x", "a/b", "", "x\u{1b}[2J"] {
        let env = envelope(id);
        assert_eq!(
            spool.store(&env, b"x").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            spool.update(&env).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            spool.remove(id).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            spool.read_message(id).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            spool.load(id).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
    let e = spool.load("NOPE").unwrap_err();
    assert_eq!(e.to_string(), "no message NOPE in the queue");
}

#[test]
fn the_lock_holds_when_the_lock_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let held = Spool::open(dir.path()).unwrap();
    fs::remove_file(dir.path().join("lock")).unwrap();
    let e = Spool::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(
        e.to_string(),
        format!(
            "the spool {} is in use by another tlsrelay process",
            dir.path().display()
        )
    );
    assert!(is_locked(dir.path()));
    drop(held);
    assert!(!is_locked(dir.path()));
    Spool::open(dir.path()).unwrap();
}
