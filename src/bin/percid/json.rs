//! A tiny JSON writer, so the command needs no serialization dependency.
//!
//! Objects keep their keys in insertion order: the output is deterministic and
//! reads in the order the code builds it, which keeps diffs of saved results small.

use std::fmt::{self, Write};

/// A JSON value, built in memory and rendered compactly with `Display`.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// Non-finite values render as `null` (JSON has no NaN or infinity).
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    /// Key order is insertion order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(key, value)` pairs, in the given order.
    pub fn object<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Object(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// An array of anything convertible to a value.
    pub fn array<T: Into<Json>>(items: impl IntoIterator<Item = T>) -> Json {
        Json::Array(items.into_iter().map(Into::into).collect())
    }

    /// A float rounded to `digits` decimals, so reports do not carry timer noise digits.
    pub fn rounded(x: f64, digits: i32) -> Json {
        let scale = 10f64.powi(digits);
        Json::Float((x * scale).round() / scale)
    }
}

impl From<bool> for Json {
    fn from(v: bool) -> Json {
        Json::Bool(v)
    }
}

impl From<u32> for Json {
    fn from(v: u32) -> Json {
        Json::UInt(v.into())
    }
}

impl From<u64> for Json {
    fn from(v: u64) -> Json {
        Json::UInt(v)
    }
}

impl From<usize> for Json {
    fn from(v: usize) -> Json {
        Json::UInt(v as u64)
    }
}

impl From<i64> for Json {
    fn from(v: i64) -> Json {
        Json::Int(v)
    }
}

impl From<f64> for Json {
    fn from(v: f64) -> Json {
        Json::Float(v)
    }
}

impl From<&str> for Json {
    fn from(v: &str) -> Json {
        Json::Str(v.to_owned())
    }
}

impl From<String> for Json {
    fn from(v: String) -> Json {
        Json::Str(v)
    }
}

impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Json {
        v.map_or(Json::Null, Into::into)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Int(n) => write!(f, "{n}"),
            Json::UInt(n) => write!(f, "{n}"),
            // Rust's `Display` for f64 never uses exponents and prints the shortest
            // string that reads back to the same value: valid JSON as it stands.
            Json::Float(x) if x.is_finite() => write!(f, "{x}"),
            Json::Float(_) => f.write_str("null"),
            Json::Str(s) => write_string(f, s),
            Json::Array(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_char(']')
            }
            Json::Object(pairs) => {
                f.write_char('{')?;
                for (i, (key, value)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, key)?;
                    write!(f, ":{value}")?;
                }
                f.write_char('}')
            }
        }
    }
}

/// Writes `s` as a JSON string literal (RFC 8259 section 7).
fn write_string(f: &mut impl Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if u32::from(c) < 0x20 => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn escapes_strings() {
        let s = Json::from("a\"b\\c\nd\u{1}é");
        assert_eq!(s.to_string(), r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn keeps_key_order_and_nests() {
        let v = Json::object([
            ("z", Json::from(1u32)),
            ("a", Json::array([true, false])),
            ("m", Json::from(None::<String>)),
            ("f", Json::rounded(1.23456, 3)),
            ("n", Json::Float(f64::NAN)),
            ("e", Json::object::<&str>([])),
        ]);
        assert_eq!(
            v.to_string(),
            r#"{"z":1,"a":[true,false],"m":null,"f":1.235,"n":null,"e":{}}"#
        );
    }

    #[test]
    fn floats_never_use_exponents() {
        assert_eq!(Json::Float(1e-7).to_string(), "0.0000001");
        assert_eq!(Json::Float(2.0).to_string(), "2");
        assert_eq!(Json::Int(-3).to_string(), "-3");
    }
}
