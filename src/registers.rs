//! Register maps as data: one TOML file per device model (see `models/README.md`),
//! decoding of raw Modbus words into engineering values and encoding back.
//!
//! Maps are data rather than code so that supporting a new device type is a new
//! file in `models/`, reviewed against its source, with no Rust change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// SunSpec defines scale factors in -10..=10; anything outside is a corrupt
/// register or a misaligned map, and applying it would produce absurd values.
const MAX_SCALE_EXPONENT: i16 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointType {
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Acc16,
    Acc32,
    Acc64,
    Float32,
    Float64,
    String,
    Enum16,
    Enum32,
    Bitfield16,
    Bitfield32,
    Sunssf,
    Pad,
    Count,
}

impl PointType {
    /// Size in words implied by the type; `None` for strings, whose size is explicit.
    pub fn implied_size(self) -> Option<u16> {
        use PointType::*;
        match self {
            Int16 | Uint16 | Acc16 | Enum16 | Bitfield16 | Sunssf | Pad | Count => Some(1),
            Int32 | Uint32 | Acc32 | Float32 | Enum32 | Bitfield32 => Some(2),
            Int64 | Uint64 | Acc64 | Float64 => Some(4),
            String => None,
        }
    }

    /// Inclusive range of raw values the type can carry on the wire.
    fn raw_range(self) -> Option<(i128, i128)> {
        use PointType::*;
        Some(match self {
            Int16 | Sunssf => (i16::MIN as i128, i16::MAX as i128),
            Uint16 | Acc16 | Enum16 | Bitfield16 | Count | Pad => (0, u16::MAX as i128),
            Int32 => (i32::MIN as i128, i32::MAX as i128),
            Uint32 | Acc32 | Enum32 | Bitfield32 => (0, u32::MAX as i128),
            Int64 => (i64::MIN as i128, i64::MAX as i128),
            Uint64 => (0, u64::MAX as i128),
            // SunSpec defines acc64 as a non-negative signed 64-bit counter.
            Acc64 => (0, i64::MAX as i128),
            Float32 | Float64 | String => return None,
        })
    }

    /// Raw value meaning "not implemented" for this type, if any.
    fn sentinel(self) -> Option<i128> {
        use PointType::*;
        match self {
            Int16 | Sunssf | Pad => Some(i16::MIN as i128),
            Uint16 | Enum16 | Bitfield16 => Some(u16::MAX as i128),
            Int32 => Some(i32::MIN as i128),
            Uint32 | Enum32 | Bitfield32 => Some(u32::MAX as i128),
            Int64 => Some(i64::MIN as i128),
            Uint64 => Some(u64::MAX as i128),
            Acc16 | Acc32 | Acc64 => Some(0),
            Count | Float32 | Float64 | String => None,
        }
    }

    fn is_signed(self) -> bool {
        matches!(
            self,
            PointType::Int16
                | PointType::Int32
                | PointType::Int64
                | PointType::Sunssf
                | PointType::Pad
        )
    }
}

impl fmt::Display for PointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format!("{self:?}").to_lowercase())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Scale {
    Exponent(i16),
    Point(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Holding,
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    HighFirst,
    LowFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    Multiple,
    SingleOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    R,
    Rw,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    pub offset: u16,
    pub ty: PointType,
    pub size: u16,
    pub scale: Option<Scale>,
    pub unit: Option<String>,
    pub access: Access,
    /// Named raw values of an enum-like point, e.g. `remote = 802` for the code
    /// that hands a device to remote control. Empty for most points.
    pub values: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    pub key: String,
    pub sunspec_id: Option<u16>,
    pub name: String,
    pub length: u16,
    pub base: u16,
    pub table: Table,
    pub word_order: WordOrder,
    pub write: WriteMode,
    pub provenance: String,
    pub points: Vec<Point>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{origin}: cannot parse map: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: invalid map: {message}")]
    Invalid { origin: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{origin}: map key {key:?} already defined by {first}")]
    DuplicateKey {
        key: String,
        origin: String,
        first: String,
    },
    #[error("map {map}: no point named {point:?}")]
    UnknownPoint { map: String, point: String },
    #[error("map {map}, point {point}: block of {got} words is too short, need {need}")]
    BlockTooShort {
        map: String,
        point: String,
        need: usize,
        got: usize,
    },
    #[error("map {map}, point {point}: cannot {op} a {ty} point")]
    WrongType {
        map: String,
        point: String,
        ty: PointType,
        op: &'static str,
    },
    #[error("map {map}, point {point}: value {value} is out of range for {ty}")]
    OutOfRange {
        map: String,
        point: String,
        ty: PointType,
        value: String,
    },
    #[error("map {map}, point {point}: scale factor {exponent} outside -10..=10")]
    BadScale {
        map: String,
        point: String,
        exponent: i16,
    },
    #[error("map {map}, point {point}: scale factor {scale_point} is not implemented (0x8000), cannot encode")]
    ScaleUnavailable {
        map: String,
        point: String,
        scale_point: String,
    },
    #[error("map {map}, point {point}: not writable (access is r)")]
    NotWritable { map: String, point: String },
    #[error("map {map}, point {point}: string of {len} bytes does not fit in {max} bytes")]
    StringTooLong {
        map: String,
        point: String,
        len: usize,
        max: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    key: String,
    sunspec_id: Option<u16>,
    name: String,
    length: u16,
    base: Option<u16>,
    table: Table,
    word_order: WordOrder,
    write: WriteMode,
    provenance: String,
    #[serde(default)]
    points: Vec<RawPoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    name: String,
    offset: u16,
    #[serde(rename = "type")]
    ty: PointType,
    size: Option<u16>,
    scale: Option<Scale>,
    unit: Option<String>,
    #[serde(default)]
    access: Access,
    #[serde(default)]
    values: BTreeMap<String, i64>,
}

impl RegisterMap {
    pub fn from_toml_str(text: &str, origin: &str) -> Result<RegisterMap, RegisterError> {
        let raw: RawMap = toml::from_str(text).map_err(|e| RegisterError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| RegisterError::Invalid {
            origin: origin.to_string(),
            message,
        };
        if raw.key.is_empty() {
            return Err(invalid("empty key".into()));
        }
        match raw.sunspec_id {
            Some(id) => {
                if raw.key != format!("sunspec/{id}") {
                    return Err(invalid(format!(
                        "key {:?} must be \"sunspec/{id}\" for sunspec_id {id}",
                        raw.key
                    )));
                }
                if raw.base.is_some() {
                    return Err(invalid(
                        "SunSpec maps have no base: discovery finds the model's address".into(),
                    ));
                }
            }
            None => {
                if raw.key.starts_with("sunspec/") {
                    return Err(invalid(format!("key {:?} needs a sunspec_id", raw.key)));
                }
            }
        }
        let mut points = Vec::with_capacity(raw.points.len());
        for p in raw.points {
            let size = match (p.ty.implied_size(), p.size) {
                (Some(implied), None) => implied,
                (Some(implied), Some(given)) if given == implied => implied,
                (Some(implied), Some(given)) => {
                    return Err(invalid(format!(
                        "point {}: size {given} does not match type {} ({implied} words)",
                        p.name, p.ty
                    )))
                }
                (None, Some(given)) if given > 0 => given,
                (None, _) => {
                    return Err(invalid(format!(
                        "point {}: strings need a size of at least 1 word",
                        p.name
                    )))
                }
            };
            points.push(Point {
                name: p.name,
                offset: p.offset,
                ty: p.ty,
                size,
                scale: p.scale,
                unit: p.unit,
                access: p.access,
                values: p.values,
            });
        }
        let map = RegisterMap {
            key: raw.key,
            sunspec_id: raw.sunspec_id,
            name: raw.name,
            length: raw.length,
            base: raw.base.unwrap_or(0),
            table: raw.table,
            word_order: raw.word_order,
            write: raw.write,
            provenance: raw.provenance,
            points,
        };
        map.validate().map_err(invalid)?;
        Ok(map)
    }

    fn validate(&self) -> Result<(), String> {
        if self.sunspec_id.is_none() && u32::from(self.base) + u32::from(self.length) > 0x1_0000 {
            return Err(format!(
                "base {} + length {} runs past register 65535",
                self.base, self.length
            ));
        }
        let limit = u32::from(self.block_len());
        let mut names = HashSet::new();
        for p in &self.points {
            if p.name.is_empty() {
                return Err(format!("point at offset {} has an empty name", p.offset));
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("point {} defined twice", p.name));
            }
            let end = u32::from(p.offset) + u32::from(p.size);
            if end > limit {
                return Err(format!(
                    "point {} (offset {}, {} words) ends past the map's {limit} words",
                    p.name, p.offset, p.size
                ));
            }
            if !p.values.is_empty() {
                let Some((lo, hi)) = p.ty.raw_range() else {
                    return Err(format!(
                        "point {}: a {} point cannot have named values",
                        p.name, p.ty
                    ));
                };
                if let Some((n, v)) = p
                    .values
                    .iter()
                    .find(|(_, v)| i128::from(**v) < lo || i128::from(**v) > hi)
                {
                    return Err(format!(
                        "point {}: value {n} = {v} does not fit a {}",
                        p.name, p.ty
                    ));
                }
            }
            match &p.scale {
                None => {}
                Some(_) if p.ty == PointType::String || p.ty == PointType::Sunssf => {
                    return Err(format!(
                        "point {}: a {} point cannot be scaled",
                        p.name, p.ty
                    ));
                }
                Some(Scale::Exponent(e)) if e.abs() > MAX_SCALE_EXPONENT => {
                    return Err(format!("point {}: scale {e} outside -10..=10", p.name));
                }
                Some(Scale::Exponent(_)) => {}
                Some(Scale::Point(sf)) => match self.point(sf) {
                    Some(sfp) if sfp.ty == PointType::Sunssf => {}
                    Some(sfp) => {
                        return Err(format!(
                            "point {}: scale point {sf} is {}, not sunssf",
                            p.name, sfp.ty
                        ))
                    }
                    None => {
                        return Err(format!("point {}: scale point {sf} does not exist", p.name))
                    }
                },
            }
        }
        Ok(())
    }

    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.iter().find(|p| p.name == name)
    }

    /// Words a read of the whole map covers: SunSpec = length + 2 (ID and L), vendor = length.
    pub fn block_len(&self) -> u16 {
        if self.sunspec_id.is_some() {
            self.length.saturating_add(2)
        } else {
            self.length
        }
    }

    fn lookup(&self, name: &str) -> Result<&Point, RegisterError> {
        self.point(name).ok_or_else(|| RegisterError::UnknownPoint {
            map: self.key.clone(),
            point: name.to_string(),
        })
    }

    fn slice<'b>(&self, block: &'b [u16], p: &Point) -> Result<&'b [u16], RegisterError> {
        let start = usize::from(p.offset);
        let end = start + usize::from(p.size);
        block
            .get(start..end)
            .ok_or_else(|| RegisterError::BlockTooShort {
                map: self.key.clone(),
                point: p.name.clone(),
                need: end,
                got: block.len(),
            })
    }

    fn slice_mut<'b>(
        &self,
        block: &'b mut [u16],
        p: &Point,
    ) -> Result<&'b mut [u16], RegisterError> {
        let start = usize::from(p.offset);
        let end = start + usize::from(p.size);
        let got = block.len();
        block
            .get_mut(start..end)
            .ok_or_else(|| RegisterError::BlockTooShort {
                map: self.key.clone(),
                point: p.name.clone(),
                need: end,
                got,
            })
    }

    fn wrong_type(&self, p: &Point, op: &'static str) -> RegisterError {
        RegisterError::WrongType {
            map: self.key.clone(),
            point: p.name.clone(),
            ty: p.ty,
            op,
        }
    }

    /// The exponent currently in force for `p`, read from `block` when it is a
    /// point; `Ok(None)` when the scale factor register says "not implemented".
    fn exponent_in_block(&self, block: &[u16], p: &Point) -> Result<Option<i16>, RegisterError> {
        let e = match &p.scale {
            None => 0,
            Some(Scale::Exponent(e)) => *e,
            Some(Scale::Point(sf)) => {
                let sfp = self.lookup(sf)?;
                let raw = self.slice(block, sfp)?[0] as i16;
                if raw == i16::MIN {
                    return Ok(None);
                }
                raw
            }
        };
        self.check_exponent(p, e)?;
        Ok(Some(e))
    }

    fn check_exponent(&self, p: &Point, e: i16) -> Result<(), RegisterError> {
        if e.abs() > MAX_SCALE_EXPONENT {
            return Err(RegisterError::BadScale {
                map: self.key.clone(),
                point: p.name.clone(),
                exponent: e,
            });
        }
        Ok(())
    }

    /// `block` starts at offset 0 of the map. Applies the scale (the scale-factor
    /// point is read from the same block, since devices may change it at run time)
    /// and returns `Ok(None)` for SunSpec "not implemented" sentinels, including a
    /// value whose scale factor is itself the sentinel.
    pub fn decode_f64(&self, block: &[u16], name: &str) -> Result<Option<f64>, RegisterError> {
        let p = self.lookup(name)?;
        let words = self.slice(block, p)?;
        let unscaled = match p.ty {
            PointType::String => return Err(self.wrong_type(p, "decode as a number")),
            PointType::Float32 => {
                let bits = join_words(words, self.word_order) as u32;
                let v = f32::from_bits(bits);
                // NaN is SunSpec's "not implemented"; an infinity is no reading either,
                // and would poison every counter difference it enters (the fuzz target's
                // invariant: a decoded value is finite or absent).
                if !v.is_finite() {
                    return Ok(None);
                }
                f64::from(v)
            }
            PointType::Float64 => {
                let v = f64::from_bits(join_words(words, self.word_order));
                if !v.is_finite() {
                    return Ok(None);
                }
                v
            }
            ty => {
                let raw = raw_from_bits(ty, join_words(words, self.word_order));
                if ty.sentinel() == Some(raw) {
                    return Ok(None);
                }
                raw as f64
            }
        };
        let Some(e) = self.exponent_in_block(block, p)? else {
            return Ok(None);
        };
        Ok(Some(apply_exponent(unscaled, e)))
    }

    /// Trailing NULs and spaces are trimmed; an all-NUL string is `None`.
    pub fn decode_string(
        &self,
        block: &[u16],
        name: &str,
    ) -> Result<Option<String>, RegisterError> {
        let p = self.lookup(name)?;
        if p.ty != PointType::String {
            return Err(self.wrong_type(p, "decode as a string"));
        }
        let words = self.slice(block, p)?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        if bytes.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        // Devices NUL-terminate short strings and may leave garbage after the NUL.
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        Ok(Some(text.trim_end_matches(' ').to_string()))
    }

    /// Encodes an engineering value into `block`, applying the scale factor
    /// currently in `block` (scale factors apply to writes too). Rounds to
    /// nearest; values outside the type's range, or that would read back as the
    /// "not implemented" sentinel, are errors rather than wrapping.
    pub fn encode_f64(
        &self,
        block: &mut [u16],
        name: &str,
        value: f64,
    ) -> Result<(), RegisterError> {
        let p = self.lookup(name)?;
        let e = match self.exponent_in_block(block, p)? {
            Some(e) => e,
            None => {
                let scale_point = match &p.scale {
                    Some(Scale::Point(sf)) => sf.clone(),
                    _ => String::new(),
                };
                return Err(RegisterError::ScaleUnavailable {
                    map: self.key.clone(),
                    point: p.name.clone(),
                    scale_point,
                });
            }
        };
        let words = self.value_words(p, value, e)?;
        let order = self.word_order;
        let dst = self.slice_mut(block, p)?;
        split_words(words, order, dst);
        Ok(())
    }

    /// Writes a raw integer (e.g. a scale factor or an enum), unscaled. Sentinels
    /// are allowed here: building a "not implemented" register is legitimate.
    /// Fills every point of `block` except `ID`, `L` and pads with its SunSpec
    /// "not implemented" value (0x8000, 0xFFFF, ..., NaN for floats, NUL strings;
    /// accumulators and counts stay 0), as a device leaves the points it lacks.
    pub fn fill_unimplemented(&self, block: &mut [u16]) {
        let order = self.word_order;
        for p in &self.points {
            if matches!(p.name.as_str(), "ID" | "L") || p.ty == PointType::Pad {
                continue;
            }
            let Ok(dst) = self.slice_mut(block, p) else {
                continue;
            };
            match p.ty {
                PointType::Float32 => split_words(u64::from(f32::NAN.to_bits()), order, dst),
                PointType::Float64 => split_words(f64::NAN.to_bits(), order, dst),
                ty => match ty.sentinel() {
                    Some(s) => split_words(s as u64, order, dst),
                    None => dst.fill(0),
                },
            }
        }
    }

    pub fn encode_raw(&self, block: &mut [u16], name: &str, raw: i64) -> Result<(), RegisterError> {
        let p = self.lookup(name)?;
        let Some((lo, hi)) = p.ty.raw_range() else {
            return Err(self.wrong_type(p, "encode a raw integer into"));
        };
        let raw = i128::from(raw);
        if raw < lo || raw > hi {
            return Err(self.out_of_range(p, raw));
        }
        let order = self.word_order;
        let dst = self.slice_mut(block, p)?;
        split_words(raw as u64, order, dst);
        Ok(())
    }

    pub fn encode_string(
        &self,
        block: &mut [u16],
        name: &str,
        s: &str,
    ) -> Result<(), RegisterError> {
        let p = self.lookup(name)?;
        if p.ty != PointType::String {
            return Err(self.wrong_type(p, "encode a string into"));
        }
        let max = usize::from(p.size) * 2;
        if s.len() > max {
            return Err(RegisterError::StringTooLong {
                map: self.key.clone(),
                point: p.name.clone(),
                len: s.len(),
                max,
            });
        }
        let mut bytes = s.as_bytes().to_vec();
        bytes.resize(max, 0);
        let dst = self.slice_mut(block, p)?;
        for (w, pair) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
            *w = u16::from_be_bytes([pair[0], pair[1]]);
        }
        Ok(())
    }

    /// Words to write for a setpoint: (offset within map, words). The scale
    /// exponent comes from the caller, who must have read it from the device just
    /// before, since a stale scale factor silently writes a value 10^n off.
    pub fn setpoint_words(
        &self,
        name: &str,
        value: f64,
        scale_exponent: i16,
    ) -> Result<(u16, Vec<u16>), RegisterError> {
        let p = self.lookup(name)?;
        if p.access != Access::Rw {
            return Err(RegisterError::NotWritable {
                map: self.key.clone(),
                point: p.name.clone(),
            });
        }
        let e = match &p.scale {
            None => 0,
            Some(Scale::Exponent(e)) => *e,
            Some(Scale::Point(_)) => scale_exponent,
        };
        self.check_exponent(p, e)?;
        let bits = self.value_words(p, value, e)?;
        let mut words = vec![0u16; usize::from(p.size)];
        split_words(bits, self.word_order, &mut words);
        Ok((p.offset, words))
    }

    fn out_of_range(&self, p: &Point, value: impl fmt::Display) -> RegisterError {
        RegisterError::OutOfRange {
            map: self.key.clone(),
            point: p.name.clone(),
            ty: p.ty,
            value: value.to_string(),
        }
    }

    /// The point's bits (right-aligned in a u64) for an engineering value at exponent `e`.
    fn value_words(&self, p: &Point, value: f64, e: i16) -> Result<u64, RegisterError> {
        if !value.is_finite() {
            return Err(self.out_of_range(p, value));
        }
        match p.ty {
            PointType::String | PointType::Pad => Err(self.wrong_type(p, "encode a number into")),
            PointType::Float32 => {
                let v = apply_exponent(value, -e) as f32;
                if !v.is_finite() {
                    return Err(self.out_of_range(p, value));
                }
                Ok(u64::from(v.to_bits()))
            }
            PointType::Float64 => {
                let v = apply_exponent(value, -e);
                if !v.is_finite() {
                    return Err(self.out_of_range(p, value));
                }
                Ok(v.to_bits())
            }
            ty => {
                let scaled = apply_exponent(value, -e).round();
                let Some((lo, hi)) = ty.raw_range() else {
                    return Err(self.wrong_type(p, "encode a number into"));
                };
                // Compare in f64 before converting: `as i128` would saturate silently.
                if !(scaled >= lo as f64 && scaled <= hi as f64) {
                    return Err(self.out_of_range(p, value));
                }
                let raw = (scaled as i128).clamp(lo, hi);
                let is_acc = matches!(ty, PointType::Acc16 | PointType::Acc32 | PointType::Acc64);
                // A fresh accumulator legitimately starts at 0; any other sentinel
                // would read back as "not implemented".
                if !is_acc && ty.sentinel() == Some(raw) {
                    return Err(self.out_of_range(p, value));
                }
                Ok(raw as u64)
            }
        }
    }
}

/// `value * 10^e`, exact for integer results where f64 allows it.
fn apply_exponent(value: f64, e: i16) -> f64 {
    // Dividing by 10^n is more exact than multiplying by 10^-n (0.1 is not representable).
    if e >= 0 {
        value * 10f64.powi(i32::from(e))
    } else {
        value / 10f64.powi(-i32::from(e))
    }
}

fn join_words(words: &[u16], order: WordOrder) -> u64 {
    let fold = |acc: u64, w: &u16| (acc << 16) | u64::from(*w);
    match order {
        WordOrder::HighFirst => words.iter().fold(0, fold),
        WordOrder::LowFirst => words.iter().rev().fold(0, fold),
    }
}

fn split_words(bits: u64, order: WordOrder, dst: &mut [u16]) {
    let n = dst.len();
    for i in 0..n {
        // Word i counted from the least significant end.
        let w = (bits >> (16 * i)) as u16;
        match order {
            WordOrder::HighFirst => dst[n - 1 - i] = w,
            WordOrder::LowFirst => dst[i] = w,
        }
    }
}

fn raw_from_bits(ty: PointType, bits: u64) -> i128 {
    let size = ty.implied_size().unwrap_or(1);
    if ty.is_signed() {
        match size {
            1 => i128::from(bits as u16 as i16),
            2 => i128::from(bits as u32 as i32),
            _ => i128::from(bits as i64),
        }
    } else {
        i128::from(bits)
    }
}

/// All register maps known to the daemon, by key.
#[derive(Debug, Clone, Default)]
pub struct ModelLibrary {
    maps: BTreeMap<String, RegisterMap>,
    sunspec: HashMap<u16, String>,
    origins: HashMap<String, String>,
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_models.rs"));
}

impl ModelLibrary {
    /// Every file of `models/`, compiled into the binary by `build.rs`.
    pub fn embedded() -> Result<ModelLibrary, RegisterError> {
        let mut lib = ModelLibrary::default();
        for (path, text) in embedded::EMBEDDED_MODELS {
            lib.insert(
                RegisterMap::from_toml_str(text, &format!("models/{path}"))?,
                path,
            )?;
        }
        Ok(lib)
    }

    /// Loads every `*.toml` below `dir`, recursively.
    pub fn load_dir(dir: &Path) -> Result<ModelLibrary, RegisterError> {
        let mut files = Vec::new();
        collect_toml(dir, &mut files)?;
        files.sort();
        let mut lib = ModelLibrary::default();
        for file in files {
            let origin = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| RegisterError::Io {
                path: origin.clone(),
                message: e.to_string(),
            })?;
            lib.insert(RegisterMap::from_toml_str(&text, &origin)?, &origin)?;
        }
        Ok(lib)
    }

    fn insert(&mut self, map: RegisterMap, origin: &str) -> Result<(), RegisterError> {
        if let Some(first) = self.origins.get(&map.key) {
            return Err(RegisterError::DuplicateKey {
                key: map.key.clone(),
                origin: origin.to_string(),
                first: first.clone(),
            });
        }
        if let Some(id) = map.sunspec_id {
            self.sunspec.insert(id, map.key.clone());
        }
        self.origins.insert(map.key.clone(), origin.to_string());
        self.maps.insert(map.key.clone(), map);
        Ok(())
    }

    /// Adds a site's own maps; a site map with the key of a built-in one replaces
    /// it, so a site can correct a vendor map without rebuilding ped.
    pub fn extend(&mut self, other: ModelLibrary) {
        for (key, map) in other.maps {
            if let Some(id) = map.sunspec_id {
                self.sunspec.insert(id, key.clone());
            }
            if let Some(origin) = other.origins.get(&key) {
                self.origins.insert(key.clone(), origin.clone());
            }
            self.maps.insert(key, map);
        }
    }

    pub fn get(&self, key: &str) -> Option<&RegisterMap> {
        self.maps.get(key)
    }

    pub fn sunspec(&self, id: u16) -> Option<&RegisterMap> {
        self.sunspec.get(&id).and_then(|k| self.maps.get(k))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.maps.keys().map(String::as_str)
    }
}

fn collect_toml(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), RegisterError> {
    let io = |e: std::io::Error| RegisterError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect_toml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
