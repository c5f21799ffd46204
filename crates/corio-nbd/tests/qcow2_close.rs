//! A qcow2 image closed without a last flush still holds what was written
//! to it (imago's sync mode writes its metadata caches back when the image
//! is dropped; its async mode would not, which matters if the backend ever
//! moves to it: see BENCHMARKS.md, qcow2 phase 2).
//! Missing qemu-img / qemu-io fail the test.

mod helpers;
mod qcow2_helpers;

use corio_nbd::storage::qcow2::{Qcow2Options, Qcow2Storage};
use corio_nbd::storage::Storage;
use helpers::process::TempDir;
use qcow2_helpers::{check_clean, create, qemu_io, s};

#[test]
fn dropped_image_keeps_its_writes() {
    let dir = TempDir::new("q2-close");
    let img = dir.path("drop.qcow2");
    create("qcow2", &img, "8M", &[]);
    let image = Qcow2Storage::open(&img, Qcow2Options::default()).unwrap();
    // Two clusters in fresh L2 entries (held in imago's cache until a
    // flush), and a partial one.
    image
        .write_at(1 << 20, vec![0x5a; 128 << 10], false)
        .unwrap();
    image.write_at(5 << 20, vec![0xa5; 3000], false).unwrap();
    drop(image);
    check_clean(&img);
    qemu_io(
        "qcow2",
        s(&img),
        &[
            "read -P 0x5a 1M 128k",
            "read -P 0xa5 5M 3000",
            "read -P 0 0 1M",
        ],
    );
}
