//! Fuzzes the zip index builder: it must never panic, and any index it
//! returns must satisfy `check`.
#![no_main]

#[path = "check.rs"]
mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = fsd::volume::archive::zip::index_zip(&data, "fuzz", check::meta(), &mut |_| {}) {
        check::check(&idx, data.len() as u64);
    }
});
