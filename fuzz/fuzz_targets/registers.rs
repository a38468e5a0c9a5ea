//! Register decoding over arbitrary words: every point of every built-in map (which
//! together use every point type, scale factors by exponent and by point, both word
//! orders) and of a synthetic map with one point of each type, plus encoding of
//! arbitrary values back. Nothing may panic; a decoded value is finite or absent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ped::registers::{ModelLibrary, PointType, RegisterMap};
use std::sync::OnceLock;

const EVERY_TYPE: &str = r#"
key = "fuzz/every_type"
name = "every point type"
length = 40
base = 0
table = "holding"
word_order = "low_first"
write = "multiple"
provenance = "fuzz target"

[[points]]
name = "sf"
offset = 0
type = "sunssf"
[[points]]
name = "i16"
offset = 1
type = "int16"
scale = "sf"
access = "rw"
[[points]]
name = "u16"
offset = 2
type = "uint16"
scale = -3
access = "rw"
[[points]]
name = "a16"
offset = 3
type = "acc16"
[[points]]
name = "e16"
offset = 4
type = "enum16"
[[points]]
name = "b16"
offset = 5
type = "bitfield16"
[[points]]
name = "cnt"
offset = 6
type = "count"
[[points]]
name = "pad"
offset = 7
type = "pad"
[[points]]
name = "i32"
offset = 8
type = "int32"
scale = "sf"
access = "rw"
[[points]]
name = "u32"
offset = 10
type = "uint32"
scale = 2
access = "rw"
[[points]]
name = "a32"
offset = 12
type = "acc32"
[[points]]
name = "e32"
offset = 14
type = "enum32"
[[points]]
name = "b32"
offset = 16
type = "bitfield32"
[[points]]
name = "f32"
offset = 18
type = "float32"
access = "rw"
[[points]]
name = "i64"
offset = 20
type = "int64"
access = "rw"
[[points]]
name = "u64"
offset = 24
type = "uint64"
[[points]]
name = "a64"
offset = 28
type = "acc64"
[[points]]
name = "f64"
offset = 32
type = "float64"
access = "rw"
[[points]]
name = "s"
offset = 36
type = "string"
size = 4
access = "rw"
"#;

fn maps() -> &'static Vec<RegisterMap> {
    static MAPS: OnceLock<Vec<RegisterMap>> = OnceLock::new();
    MAPS.get_or_init(|| {
        let lib = ModelLibrary::embedded().expect("built-in maps load");
        let mut v: Vec<RegisterMap> = lib.keys().filter_map(|k| lib.get(k).cloned()).collect();
        v.push(RegisterMap::from_toml_str(EVERY_TYPE, "fuzz").expect("synthetic map is valid"));
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        // A register map file as text: parse errors, never panics.
        if let Ok(text) = std::str::from_utf8(rest) {
            if let Ok(map) = RegisterMap::from_toml_str(text, "fuzz") {
                let words = vec![0x8000u16; usize::from(map.block_len())];
                for p in &map.points {
                    let _ = map.decode_f64(&words, &p.name);
                }
            }
        }
        return;
    }
    let words: Vec<u16> = rest
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let value = rest
        .get(..8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .unwrap_or(0.0);
    for map in maps() {
        // Short blocks exercise the bounds checks; full-length ones the decoders.
        let mut block = words.clone();
        if mode & 2 == 2 {
            block.resize(usize::from(map.block_len()), 0);
        }
        for p in &map.points {
            if matches!(p.ty, PointType::String) {
                let _ = map.decode_string(&block, &p.name);
            } else if let Ok(Some(v)) = map.decode_f64(&block, &p.name) {
                assert!(v.is_finite(), "{} {}: {v}", map.key, p.name);
            }
            if mode & 4 == 4 {
                let mut b = block.clone();
                let _ = map.encode_f64(&mut b, &p.name, value);
                let _ = map.setpoint_words(&p.name, value, i16::from(mode as i8 >> 3));
            }
        }
    }
});
