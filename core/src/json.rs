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

/// What is known of one nesting depth of the data: the arrays at that depth all have
/// `width` elements, all arrays (`kind == Some(true)`) or all scalars.
#[derive(Clone, Copy)]
struct Level {
    /// Elements of the array open at this depth so far.
    count: usize,
    /// Elements every array at this depth must have.
    width: Option<usize>,
    /// Whether the elements of arrays at this depth are arrays (`true`) or scalars.
    kind: Option<bool>,
}

/// Checks, element by element, that nested data is rectangular and, with a declared shape,
/// nested exactly as the shape (or flat). One allocation per call (the levels), none per
/// element.
struct Nesting<'s> {
    shape: Option<&'s [usize]>,
    levels: Vec<Level>,
    /// Arrays open now (the top-level array is depth 1).
    depth: usize,
}

fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(","))
}

impl<'s> Nesting<'s> {
    fn new(shape: Option<&'s [usize]>) -> Self {
        Self {
            shape,
            levels: Vec::with_capacity(shape.map_or(4, |s| s.len().max(1))),
            depth: 0,
        }
    }

    /// Where the array open at `depth` (≥ 2) sits: `row 3`, `row 3[1]`, ...
    fn position(&self, depth: usize) -> String {
        let mut out = format!("row {}", self.levels[0].count.saturating_sub(1));
        for level in &self.levels[1..depth.saturating_sub(1).max(1)] {
            out.push_str(&format!("[{}]", level.count.saturating_sub(1)));
        }
        out
    }

    /// Where the element just counted in the array open now sits.
    fn item_position(&self) -> String {
        if self.depth <= 1 {
            format!("row {}", self.levels[0].count.saturating_sub(1))
        } else {
            format!(
                "{}[{}]",
                self.position(self.depth),
                self.levels[self.depth - 1].count.saturating_sub(1)
            )
        }
    }

    /// An element (an array when `is_array`) of the array open now.
    #[inline]
    fn element(&mut self, is_array: bool) -> Result<(), String> {
        // Almost every element is one more of the kind its array already holds.
        if let Some(level) = self.levels.get_mut(self.depth.wrapping_sub(1)) {
            if level.kind == Some(is_array) {
                level.count += 1;
                return Ok(());
            }
        }
        self.first_or_mismatched(is_array)
    }

    /// [`Nesting::element`] for the first element at a depth, or one of the wrong kind.
    #[cold]
    fn first_or_mismatched(&mut self, is_array: bool) -> Result<(), String> {
        let d = self.depth;
        if d == 1 && self.levels[0].kind.is_none() {
            // The first element decides between flat data and data nested as the shape.
            match self.shape {
                Some(shape) if is_array && shape.len() >= 2 => {
                    self.levels.resize(
                        shape.len(),
                        Level {
                            count: 0,
                            width: None,
                            kind: None,
                        },
                    );
                    for (i, (level, &width)) in self.levels.iter_mut().zip(shape).enumerate() {
                        level.width = Some(width);
                        level.kind = Some(i + 1 < shape.len());
                    }
                }
                Some(_) => self.levels[0].kind = Some(false),
                None => {}
            }
        }
        let level = &mut self.levels[d - 1];
        level.count += 1;
        match level.kind {
            None => level.kind = Some(is_array),
            Some(kind) if kind == is_array => {}
            Some(kind) => {
                let at = self.item_position();
                let what = if is_array { "an array" } else { "a number" };
                return Err(match self.shape {
                    Some(shape) if self.levels[0].width.is_none() => format!(
                        "{at} is an array among numbers: send flat data, or data nested exactly as shape {}",
                        shape_text(shape)
                    ),
                    Some(shape) if kind => format!(
                        "{at} is {what} where shape {} needs an array of {}",
                        shape_text(shape),
                        shape.get(d).copied().unwrap_or(0)
                    ),
                    Some(shape) => format!("{at} is {what} where shape {} needs a number", shape_text(shape)),
                    None => format!(
                        "{at} is {what} where the elements before it are {} (nested data must be rectangular)",
                        if kind { "arrays" } else { "numbers" }
                    ),
                });
            }
        }
        Ok(())
    }

    fn open(&mut self) {
        self.depth += 1;
        match self.levels.get_mut(self.depth - 1) {
            Some(level) => level.count = 0,
            None => self.levels.push(Level {
                count: 0,
                width: None,
                kind: None,
            }),
        }
    }

    /// Why the array closing at depth `d` with `count` elements should have had `width`.
    fn count_mismatch(&self, d: usize, count: usize, width: usize) -> String {
        let Some(shape) = self.shape else {
            let at = self.position(d);
            return format!(
                "{at} has {count} elements where the rows before it have {width} (nested data must be rectangular)"
            );
        };
        if d == 1 {
            return format!("{count} rows where shape {} needs {width}", shape_text(shape));
        }
        format!(
            "{} has {count} elements where shape {} needs {width}",
            self.position(d),
            shape_text(shape)
        )
    }

    fn close(&mut self) -> Result<(), String> {
        let d = self.depth;
        let Some(level) = self.levels.get_mut(d.wrapping_sub(1)) else {
            return Ok(());
        };
        let count = level.count;
        match level.width {
            None => level.width = Some(count),
            Some(width) if width == count => {}
            Some(width) => return Err(self.count_mismatch(d, count, width)),
        }
        self.depth -= 1;
        Ok(())
    }
}

/// Walks `raw` (text that `serde_json` already validated as JSON) and calls `f` for every
/// scalar inside the (possibly nested) top-level array, in document order. Nested data must
/// be rectangular; with `shape`, it must be flat or nested exactly as the shape.
fn scan<'a>(
    raw: &'a str,
    field: &str,
    shape: Option<&[usize]>,
    mut f: impl FnMut(usize, Scalar<'a>) -> Result<(), CoreError>,
) -> Result<(), CoreError> {
    let malformed = |message: &str| CoreError::MalformedData {
        field: field.to_string(),
        message: message.to_string(),
    };
    let nested = |message: String| CoreError::MalformedData {
        field: field.to_string(),
        message,
    };
    let bytes = raw.as_bytes();
    let mut nesting = Nesting::new(shape);
    let mut i = 0;
    let mut index = 0usize;
    let mut seen_array = false;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                if nesting.depth == 0 && seen_array {
                    return Err(malformed("expected a single array"));
                }
                if nesting.depth > 0 {
                    nesting.element(true).map_err(nested)?;
                }
                nesting.open();
                seen_array = true;
                i += 1;
            }
            b']' => {
                nesting.close().map_err(nested)?;
                i += 1;
            }
            b',' | b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            b'{' => return Err(malformed("expected an array of scalars, found an object")),
            b'"' => {
                if nesting.depth == 0 {
                    return Err(malformed("expected an array, found a string"));
                }
                nesting.element(false).map_err(nested)?;
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
                if nesting.depth == 0 {
                    return Err(malformed("expected an array of elements, found a scalar"));
                }
                nesting.element(false).map_err(nested)?;
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
/// `field` names the field in errors, e.g. `inputs[0].data`. Nested data must be
/// rectangular; [`parse_data_with_shape`] also checks it against the declared shape.
pub fn parse_data(raw: &str, datatype: DataType, field: &str) -> Result<TensorData, CoreError> {
    decode(raw, datatype, None, field)
}

/// [`parse_data`] for a tensor of the declared `shape`: the data is either flat (row-major,
/// as the Open Inference Protocol allows; its element count is the caller's to check) or
/// nested exactly as the shape at every level, e.g. `[[1,2],[3,4]]` for `[2,2]`. A
/// mismatch names the position: `inputs[0].data: row 0 has 3 elements where shape [2,4]
/// needs 4`.
pub fn parse_data_with_shape(
    raw: &str,
    datatype: DataType,
    shape: &[usize],
    field: &str,
) -> Result<TensorData, CoreError> {
    decode(raw, datatype, Some(shape), field)
}

fn decode(raw: &str, datatype: DataType, shape: Option<&[usize]>, field: &str) -> Result<TensorData, CoreError> {
    macro_rules! collect {
        ($variant:ident, $conv:expr) => {{
            let mut out = Vec::new();
            scan(raw, field, shape, |i, s| {
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

    fn shaped_err(raw: &str, shape: &[usize]) -> String {
        parse_data_with_shape(raw, DataType::Int64, shape, "inputs[0].data")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn nested_data_must_match_the_shape_at_every_level() {
        let ok = |raw: &str, shape: &[usize]| parse_data_with_shape(raw, DataType::Int64, shape, "d").unwrap();
        // Flat row-major data stays accepted, whatever the rank.
        assert_eq!(ok("[1,2,3,4,5,6,7,8]", &[2, 4]), TensorData::Int64((1..=8).collect()));
        assert_eq!(
            ok("[[1,2,3,4],[5,6,7,8]]", &[2, 4]),
            TensorData::Int64((1..=8).collect())
        );
        assert_eq!(
            ok("[[[1,2],[3,4]],[[5,6],[7,8]]]", &[2, 2, 2]),
            TensorData::Int64((1..=8).collect())
        );
        assert_eq!(ok("[[],[]]", &[2, 0]), TensorData::Int64(vec![]));
        assert_eq!(ok("[]", &[0, 3]), TensorData::Int64(vec![]));

        // The issue's example: ragged rows flattening to the right count.
        let e = shaped_err("[[1,2,3],[4,5,6,7,8]]", &[1, 8]);
        assert_eq!(e, "inputs[0].data: row 0 has 3 elements where shape [1,8] needs 8");
        let e = shaped_err("[[1,2,3,4,5,6,7,8],[9,10,11,12,13,14,15,16]]", &[1, 8]);
        assert_eq!(e, "inputs[0].data: 2 rows where shape [1,8] needs 1");
        let e = shaped_err("[[1,2,3],[4,5,6,7,8]]", &[2, 4]);
        assert_eq!(e, "inputs[0].data: row 0 has 3 elements where shape [2,4] needs 4");
        let e = shaped_err("[[1,2,3,4],[5,6,7,8,9]]", &[2, 4]);
        assert_eq!(e, "inputs[0].data: row 1 has 5 elements where shape [2,4] needs 4");
        // Right element count, wrong nesting.
        let e = shaped_err("[[1,2,3,4],[5,6,7,8]]", &[1, 8]);
        assert_eq!(e, "inputs[0].data: row 0 has 4 elements where shape [1,8] needs 8");
        let e = shaped_err("[[[1,2],[3,4]],[[5,6],[7,8,9]]]", &[2, 2, 2]);
        assert_eq!(e, "inputs[0].data: row 1[1] has 3 elements where shape [2,2,2] needs 2");
        let e = shaped_err("[[1,2],[3,[4]]]", &[2, 2]);
        assert_eq!(
            e,
            "inputs[0].data: row 1[1] is an array where shape [2,2] needs a number"
        );
        let e = shaped_err("[[1,2],3]", &[2, 2]);
        assert_eq!(
            e,
            "inputs[0].data: row 1 is a number where shape [2,2] needs an array of 2"
        );
        let e = shaped_err("[1,2,[3,4]]", &[2, 2]);
        assert!(e.starts_with("inputs[0].data: row 2 is an array among numbers"), "{e}");
        let e = shaped_err("[[1],[2]]", &[2]);
        assert!(e.starts_with("inputs[0].data: row 0 is an array among numbers"), "{e}");
        let e = shaped_err("[[[1,2]],[[3,4]]]", &[2, 2]);
        assert!(
            e.contains("row 0[0] is an array where shape [2,2] needs a number"),
            "{e}"
        );
    }

    #[test]
    fn nested_data_without_a_shape_must_be_rectangular() {
        let e = parse_data("[[1,2,3],[4,5,6,7,8]]", DataType::Fp32, "inputs[0].data")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("inputs[0].data: row 1 has 5 elements where the rows before it have 3"),
            "{e}"
        );
        let e = parse_data("[[1,2],[3]]", DataType::Fp32, "x").unwrap_err().to_string();
        assert!(
            e.contains("row 1 has 1 elements where the rows before it have 2"),
            "{e}"
        );
        let e = parse_data("[[1],[[2]]]", DataType::Fp32, "x").unwrap_err().to_string();
        assert!(
            e.contains("row 1[0] is an array where the elements before it are numbers"),
            "{e}"
        );
        let e = parse_data("[[[]],[1]]", DataType::Fp32, "x").unwrap_err().to_string();
        assert!(
            e.contains("row 1[0] is a number where the elements before it are arrays"),
            "{e}"
        );
        assert!(parse_data("[1,[2]]", DataType::Fp32, "x").is_err());
        assert_eq!(
            parse_data("[[1,2],[3,4],[5,6]]", DataType::Int32, "x").unwrap(),
            TensorData::Int32(vec![1, 2, 3, 4, 5, 6])
        );
    }
}
