//! Just enough CBOR (RFC 8949) for [`super::LifecycleProxy`] to translate
//! the Smithy RPC v2 CBOR protocol, which `aws-sdk-cloudwatch` 1.x speaks,
//! to and from the AWS JSON 1.0 protocol, which moto speaks: a CBOR item
//! becomes the JSON value a JSON-protocol client would send, and back.
//!
//! The mapping follows the two protocols' rules: maps with text keys are
//! objects; byte strings are base64 strings; a timestamp (tag 1) is its
//! epoch seconds; non-finite floats are the strings `NaN`, `Infinity`,
//! `-Infinity`. JSON has no timestamp type, so [`from_json`] asks which keys
//! hold timestamps.

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use serde_json::{Map, Number, Value};

/// Deepest nesting [`to_json`] accepts.
const MAX_DEPTH: usize = 64;

/// Decodes `bytes`, one CBOR data item, as JSON (see the module docs). An
/// empty body is `{}` (an operation without input). Fails on malformed or
/// truncated input, trailing bytes, or a map key that is not text.
pub fn to_json(bytes: &[u8]) -> Result<Value, String> {
    if bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let mut r = Reader { bytes, pos: 0 };
    let value = r
        .item(0)?
        .ok_or("a break code outside an indefinite item")?;
    if r.pos != bytes.len() {
        return Err(format!("{} bytes after the item", bytes.len() - r.pos));
    }
    Ok(value)
}

/// Encodes `value` as CBOR with definite lengths. A number that is the value
/// of a key for which `is_timestamp(key)` holds, or an element of a list
/// that is, becomes a timestamp (tag 1, epoch seconds as a float64), as
/// Smithy's decoders require. Other numbers keep JSON's kind: integers stay
/// integers, floats (`5.0` included) are float64.
pub fn from_json(value: &Value, is_timestamp: &dyn Fn(&str) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, value, false, is_timestamp);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// The argument of a head with additional information `info`; `None`
    /// for an indefinite length (31).
    fn argument(&mut self, info: u8) -> Result<Option<u64>, String> {
        let n = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.array()?)),
            26 => u64::from(u32::from_be_bytes(self.array()?)),
            27 => u64::from_be_bytes(self.array()?),
            31 => return Ok(None),
            _ => return Err(format!("reserved additional information {info}")),
        };
        Ok(Some(n))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn length(&mut self, n: u64) -> Result<usize, String> {
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.bytes.len() - self.pos)
            .ok_or_else(|| format!("length {n} past the end at byte {}", self.pos))
    }

    /// A byte or text string's content (major type `major`), definite or
    /// in chunks.
    fn string(&mut self, major: u8, arg: Option<u64>) -> Result<Vec<u8>, String> {
        if let Some(n) = arg {
            let n = self.length(n)?;
            return Ok(self.take(n)?.to_vec());
        }
        let mut out = Vec::new();
        loop {
            let head = self.byte()?;
            if head == 0xff {
                return Ok(out);
            }
            if head >> 5 != major {
                return Err(format!("a chunk of major type {} in a string", head >> 5));
            }
            let n = self
                .argument(head & 0x1f)?
                .ok_or("an indefinite chunk in a string")?;
            let n = self.length(n)?;
            out.extend_from_slice(self.take(n)?);
        }
    }

    /// The next item, or `None` for a break code.
    fn item(&mut self, depth: usize) -> Result<Option<Value>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let head = self.byte()?;
        let (major, info) = (head >> 5, head & 0x1f);
        if major == 7 {
            return self.simple(info);
        }
        let arg = self.argument(info)?;
        let value = match major {
            0 => Value::from(arg.ok_or("an indefinite integer")?),
            1 => {
                let n = arg.ok_or("an indefinite integer")?;
                let n = i64::try_from(n).map_err(|_| format!("-1-{n} is out of range"))?;
                Value::from(-1 - n)
            }
            2 => Value::from(BASE64_STANDARD.encode(self.string(2, arg)?)),
            3 => Value::from(
                String::from_utf8(self.string(3, arg)?).map_err(|e| format!("text: {e}"))?,
            ),
            4 => {
                let mut items = Vec::new();
                while arg.is_none_or(|n| (items.len() as u64) < n) {
                    match self.item(depth + 1)? {
                        Some(v) => items.push(v),
                        None if arg.is_none() => break,
                        None => return Err("a break code in a definite array".into()),
                    }
                }
                Value::Array(items)
            }
            5 => {
                let mut map = Map::new();
                let mut pairs = 0u64;
                while arg.is_none_or(|n| pairs < n) {
                    let key = match self.item(depth + 1)? {
                        Some(Value::String(k)) => k,
                        Some(other) => return Err(format!("a map key that is not text: {other}")),
                        None if arg.is_none() => break,
                        None => return Err("a break code in a definite map".into()),
                    };
                    let value = self
                        .item(depth + 1)?
                        .ok_or("a break code in place of a map value")?;
                    map.insert(key, value);
                    pairs += 1;
                }
                Value::Object(map)
            }
            // Tag 1 (epoch seconds) is the only one the protocol uses; any
            // tag stands for its content.
            6 => self
                .item(depth + 1)?
                .ok_or("a break code in place of a tagged item")?,
            _ => unreachable!("major types are 3 bits"),
        };
        Ok(Some(value))
    }

    /// A major type 7 item: false, true, null, undefined, a float, or break.
    fn simple(&mut self, info: u8) -> Result<Option<Value>, String> {
        let float = match info {
            20 => return Ok(Some(Value::Bool(false))),
            21 => return Ok(Some(Value::Bool(true))),
            22 | 23 => return Ok(Some(Value::Null)),
            25 => f16_to_f64(u16::from_be_bytes(self.array()?)),
            26 => f64::from(f32::from_be_bytes(self.array()?)),
            27 => f64::from_be_bytes(self.array()?),
            31 => return Ok(None),
            _ => return Err(format!("unsupported simple value {info}")),
        };
        Ok(Some(match Number::from_f64(float) {
            Some(n) => Value::Number(n),
            None if float.is_nan() => Value::from("NaN"),
            None if float > 0.0 => Value::from("Infinity"),
            None => Value::from("-Infinity"),
        }))
    }
}

/// A half-precision float (RFC 8949, appendix D).
fn f16_to_f64(half: u16) -> f64 {
    let exp = i32::from((half >> 10) & 0x1f);
    let mant = f64::from(half & 0x3ff);
    let value = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (mant + 1024.0) * 2f64.powi(exp - 25),
    };
    if half & 0x8000 != 0 { -value } else { value }
}

/// Appends a head of major type `major` with argument `n`, in its shortest form.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn float64(out: &mut Vec<u8>, f: f64) {
    out.push(0xfb);
    out.extend_from_slice(&f.to_be_bytes());
}

fn encode(out: &mut Vec<u8>, v: &Value, timestamp: bool, is_timestamp: &dyn Fn(&str) -> bool) {
    match v {
        Value::Null => out.push(0xf6),
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Number(n) if timestamp => {
            out.push(0xc1);
            float64(out, n.as_f64().unwrap_or_default());
        }
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => head(out, 0, u),
            (None, Some(i)) => head(out, 1, (-1 - i) as u64),
            (None, None) => float64(out, n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => {
            head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            head(out, 4, items.len() as u64);
            for item in items {
                encode(out, item, timestamp, is_timestamp);
            }
        }
        Value::Object(map) => {
            head(out, 5, map.len() as u64);
            for (k, item) in map {
                head(out, 3, k.len() as u64);
                out.extend_from_slice(k.as_bytes());
                encode(out, item, is_timestamp(k), is_timestamp);
            }
        }
    }
}
