//! Exact decoding of V2 JSON tensor data.
//!
//! A V2 request carries tensor elements as a JSON array (flat, or nested in row-major order).
//! Decoding it through `serde_json::Value` would turn every number into an `f64` first, and
//! `f64 → f32` after a decimal → `f64` rounding is a double rounding that can differ from the
//! correctly rounded `f32` by one ULP. Here the raw text of each number is parsed straight to
//! the declared datatype (`str::parse::<f32>` is correctly rounded), so a JSON request and a
//! binary request carrying the same values agree bit for bit, and `1` and `1.0` decode to
//! the same element.

use crate::{CoreError, DataType, TensorData};

/// One scalar token of the data array.
enum Scalar<'a> {
    Number(&'a str),
    Bool(bool),
    Null,
    /// A string literal's raw contents, without the quotes (escape sequences left as is).
    Str(&'a str),
}

/// Walks `raw` (text that `serde_json` already validated as JSON) and calls `f` for every
/// scalar inside the (possibly nested) top-level array, in document order.
fn scan<'a>(
    raw: &'a str,
    field: &str,
    mut f: impl FnMut(usize, Scalar<'a>) -> Result<(), CoreError>,
) -> Result<(), CoreError> {
    let malformed = |message: &str| CoreError::MalformedData {
        field: field.to_string(),
        message: message.to_string(),
    };
    let bytes = raw.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut index = 0usize;
    let mut seen_array = false;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                if depth == 0 && seen_array {
                    return Err(malformed("expected a single array"));
                }
                depth += 1;
                seen_array = true;
                i += 1;
            }
            b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' | b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            b'{' => return Err(malformed("expected an array of scalars, found an object")),
            b'"' => {
                if depth == 0 {
                    return Err(malformed("expected an array, found a string"));
                }
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                f(index, Scalar::Str(&raw[start..j.min(bytes.len())]))?;
                index += 1;
                i = j + 1;
            }
            _ => {
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b',' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    i += 1;
                }
                if depth == 0 {
                    return Err(malformed("expected an array of elements, found a scalar"));
                }
                let token = &raw[start..i];
                let scalar = match token {
                    "true" => Scalar::Bool(true),
                    "false" => Scalar::Bool(false),
                    "null" => Scalar::Null,
                    number => Scalar::Number(number),
                };
                f(index, scalar)?;
                index += 1;
            }
        }
    }
    if !seen_array {
        return Err(malformed("expected an array of elements"));
    }
    Ok(())
}

fn describe(s: &Scalar<'_>) -> String {
    match s {
        Scalar::Number(n) => (*n).to_string(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Null => "null".into(),
        Scalar::Str(s) => format!("\"{s}\""),
    }
}

fn invalid(field: &str, index: usize, s: &Scalar<'_>, dt: DataType, why: &str) -> CoreError {
    CoreError::InvalidElement {
        field: format!("{field}[{index}]"),
        message: format!("{} is not a valid {dt} element: {why}", describe(s)),
    }
}

/// Parses an integer token and narrows it to `T`.
fn parse_int<T: TryFrom<i64>>(field: &str, index: usize, s: &Scalar<'_>, dt: DataType) -> Result<T, CoreError> {
    let Scalar::Number(text) = s else {
        return Err(invalid(field, index, s, dt, "expected an integer"));
    };
    let wide: i64 = text
        .parse()
        .map_err(|_| invalid(field, index, s, dt, "expected an integer without fraction or exponent"))?;
    T::try_from(wide).map_err(|_| invalid(field, index, s, dt, "out of range"))
}

/// Parses a float token; the strings `"NaN"`, `"Infinity"` and `"-Infinity"` stand for the
/// values JSON cannot write as numbers (whether a model accepts them is checked elsewhere).
fn parse_float<T: std::str::FromStr>(field: &str, index: usize, s: &Scalar<'_>, dt: DataType) -> Result<T, CoreError> {
    let text = match s {
        Scalar::Number(n) => *n,
        Scalar::Str(special @ ("NaN" | "Infinity" | "-Infinity")) => special,
        _ => return Err(invalid(field, index, s, dt, "expected a number")),
    };
    text.parse()
        .map_err(|_| invalid(field, index, s, dt, "expected a number"))
}

/// Decodes the raw JSON text of a V2 `data` field as elements of `datatype`.
/// `field` names the field in errors, e.g. `inputs[0].data`.
pub fn parse_data(raw: &str, datatype: DataType, field: &str) -> Result<TensorData, CoreError> {
    macro_rules! collect {
        ($variant:ident, $conv:expr) => {{
            let mut out = Vec::new();
            scan(raw, field, |i, s| {
                out.push($conv(i, &s)?);
                Ok(())
            })?;
            TensorData::$variant(out)
        }};
    }
    Ok(match datatype {
        DataType::Bool => collect!(Bool, |i, s: &Scalar<'_>| match s {
            Scalar::Bool(b) => Ok(*b),
            other => Err(invalid(field, i, other, datatype, "expected true or false")),
        }),
        DataType::Uint8 => collect!(Uint8, |i, s| parse_int::<u8>(field, i, s, datatype)),
        DataType::Int8 => collect!(Int8, |i, s| parse_int::<i8>(field, i, s, datatype)),
        DataType::Int16 => collect!(Int16, |i, s| parse_int::<i16>(field, i, s, datatype)),
        DataType::Int32 => collect!(Int32, |i, s| parse_int::<i32>(field, i, s, datatype)),
        DataType::Int64 => collect!(Int64, |i, s| parse_int::<i64>(field, i, s, datatype)),
        DataType::Fp32 => collect!(Fp32, |i, s| parse_float::<f32>(field, i, s, datatype)),
        DataType::Fp64 => collect!(Fp64, |i, s| parse_float::<f64>(field, i, s, datatype)),
        DataType::Bytes => collect!(Bytes, |i, s: &Scalar<'_>| match s {
            Scalar::Str(raw) => serde_json::from_str::<String>(&format!("\"{raw}\""))
                .map(String::into_bytes)
                .map_err(|e| invalid(field, i, s, datatype, &e.to_string())),
            other => Err(invalid(field, i, other, datatype, "expected a string")),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp32_is_correctly_rounded_not_double_rounded() {
        // 1.00000005960464477539062500000001 lies just above the midpoint between 1.0 and the
        // next f32; parsed via f64 it rounds to the midpoint and then (ties-to-even) down to
        // 1.0, while the correctly rounded f32 is 1.0000001.
        let text = "[1.00000005960464477539062500000001]";
        let via_f64 = text.trim_matches(|c| c == '[' || c == ']').parse::<f64>().unwrap() as f32;
        let TensorData::Fp32(v) = parse_data(text, DataType::Fp32, "d").unwrap() else {
            panic!()
        };
        assert_eq!(v[0].to_bits(), 0x3f80_0001);
        assert_ne!(
            v[0].to_bits(),
            via_f64.to_bits(),
            "test value must expose double rounding"
        );
    }

    #[test]
    fn integers_and_floats_spelled_differently_agree() {
        assert_eq!(
            parse_data("[1, 2.0, 3e0]", DataType::Fp32, "d").unwrap(),
            TensorData::Fp32(vec![1.0, 2.0, 3.0])
        );
        assert_eq!(
            parse_data("[[1,2],[3,4]]", DataType::Int64, "d").unwrap(),
            TensorData::Int64(vec![1, 2, 3, 4])
        );
    }

    #[test]
    fn errors_name_the_element() {
        let e = parse_data("[1, 2.5]", DataType::Int32, "inputs[0].data")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inputs[0].data[1]"), "{e}");
        let e = parse_data("[1, 300]", DataType::Uint8, "inputs[0].data")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[1]") && e.contains("out of range"), "{e}");
        let e = parse_data("[true, 1]", DataType::Bool, "x").unwrap_err().to_string();
        assert!(e.contains("x[1]"), "{e}");
        assert!(parse_data("[\"a\"]", DataType::Fp32, "x").is_err());
        assert!(parse_data("[null]", DataType::Fp64, "x").is_err());
        assert!(parse_data("{\"a\":1}", DataType::Fp64, "x").is_err());
        assert!(parse_data("5", DataType::Fp64, "x").is_err());
    }

    #[test]
    fn non_finite_spellings() {
        let TensorData::Fp64(v) = parse_data(r#"["NaN","Infinity","-Infinity",1e400]"#, DataType::Fp64, "d").unwrap()
        else {
            panic!()
        };
        assert!(v[0].is_nan() && v[1] == f64::INFINITY && v[2] == f64::NEG_INFINITY && v[3] == f64::INFINITY);
        let TensorData::Fp32(v) = parse_data("[1e39]", DataType::Fp32, "d").unwrap() else {
            panic!()
        };
        assert!(v[0].is_infinite());
    }
}
