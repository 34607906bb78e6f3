//! Fuzzes the subtoken recombiner and the logical token decoder: token
//! files come from whoever holds them. Nothing may panic; a recombined token
//! must re-split into subtokens that recombine to the same bytes.
#![no_main]

use fsd::token::format::Token;
use fsd::token::subtoken::{Recombined, recombine, recombine_any, split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = [1, 2, 3, 4, 5, 6, 7, 8];
    let _ = recombine(data, &p);
    if let Ok(Recombined::Token { bytes, rod_type, group }) = recombine_any(data) {
        let _ = Token::decode(&bytes);
        let mut provider = [0u8; 8];
        provider.copy_from_slice(&data[14..22]);
        let again = split(&bytes, rod_type, &provider, group).expect("re-split");
        let file: Vec<u8> = again.iter().flatten().copied().collect();
        match recombine(&file, &provider) {
            Ok(Recombined::Token { bytes: b2, .. }) => assert_eq!(b2, bytes),
            other => panic!("re-split token did not recombine: {other:?}"),
        }
    }
    // The decoder alone, on raw bytes.
    if let Ok(t) = Token::decode(data) {
        assert_eq!(t.encode(), data, "decode/encode round trip");
    }
});
