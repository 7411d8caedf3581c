//! Exact decimal arithmetic on Postgres' numeric text form.
//!
//! conductor stores a numeric as the text `numeric_out` writes: an
//! optional `-`, digits, an optional `.` and fraction digits (never an
//! exponent), or `NaN`, `Infinity`, `-Infinity`. conductor-node's decimal
//! aggregates (`conductor_decimal_sum`/`_min`/`_max`) and the router's
//! merge of their partial results both use this module, so a shard's
//! partial and the router's combination follow one set of rules, which
//! are Postgres' own for numeric:
//! - a sum keeps the largest scale of its inputs (`1.5 + 2.25 = 3.75`,
//!   `1.50 + 1 = 2.50`), never rounds, and has no digit limit;
//! - a sum with a NaN, or with both infinities, is NaN; otherwise an
//!   infinity wins over finite values;
//! - ordering: `-Infinity` < finite values < `Infinity` < `NaN` (NaN equal
//!   to itself, as numeric's btree order has it); values equal in value but
//!   not in scale (`1.0`, `1.00`) compare equal.

use std::cmp::Ordering;
use std::fmt;

/// The names conductor-node registers its decimal aggregates under: the
/// sum, and the minimum and maximum by the order above, each of numeric
/// text, returning numeric text.
pub const SUM_FUNCTION: &str = "conductor_decimal_sum";
pub const MIN_FUNCTION: &str = "conductor_decimal_min";
pub const MAX_FUNCTION: &str = "conductor_decimal_max";
/// The names of conductor-node's scalar sum and difference of two numeric
/// texts, `(a, b, precision, scale)`: Postgres' `numeric + numeric`
/// (`-`) and then, when precision is not NULL, the assignment to a
/// `numeric(precision, scale)` column ([`Decimal::with_typmod`]), so an
/// `UPDATE ... SET amount = amount + 1` runs on the node and stores what
/// Postgres would have stored, or fails as Postgres would.
pub const ADD_FUNCTION: &str = "conductor_decimal_add";
pub const SUB_FUNCTION: &str = "conductor_decimal_sub";

/// The message a value that does not fit a `numeric(precision, scale)`
/// fails with, on the node as in Postgres.
pub const FIELD_OVERFLOW: &str = "numeric field overflow";

/// A numeric value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decimal {
    NegInfinity,
    Finite(Finite),
    Infinity,
    NaN,
}

/// A finite value: `(-1)^neg × digits × 10^-scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finite {
    neg: bool,
    /// Base-10 digits of the magnitude, least significant first, without
    /// leading (most significant) zeros: zero is empty.
    digits: Vec<u8>,
    scale: u32,
}

impl Finite {
    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// The magnitude's digit for 10^p (p may be negative).
    fn digit_at(&self, p: i64) -> u8 {
        let idx = p + self.scale as i64;
        if idx < 0 || idx >= self.digits.len() as i64 {
            0
        } else {
            self.digits[idx as usize]
        }
    }

    /// Highest power of ten with a digit, plus one (may be ≤ 0).
    fn top(&self) -> i64 {
        self.digits.len() as i64 - self.scale as i64
    }

    fn cmp_magnitude(&self, o: &Finite) -> Ordering {
        let hi = self.top().max(o.top());
        let lo = -(self.scale.max(o.scale) as i64);
        let mut p = hi - 1;
        while p >= lo {
            match self.digit_at(p).cmp(&o.digit_at(p)) {
                Ordering::Equal => p -= 1,
                other => return other,
            }
        }
        Ordering::Equal
    }

    fn rescale(&mut self, scale: u32) {
        if scale > self.scale && !self.digits.is_empty() {
            let shift = (scale - self.scale) as usize;
            self.digits.splice(0..0, std::iter::repeat_n(0, shift));
        }
        self.scale = self.scale.max(scale);
    }

    /// `self += o`, exactly.
    fn add(&mut self, o: &Finite) {
        let scale = self.scale.max(o.scale);
        self.rescale(scale);
        let shift = (scale - o.scale) as usize;
        let od = |i: usize| -> u8 {
            if i < shift || o.digits.is_empty() {
                0
            } else {
                o.digits.get(i - shift).copied().unwrap_or(0)
            }
        };
        let olen = if o.digits.is_empty() {
            0
        } else {
            o.digits.len() + shift
        };
        if self.neg == o.neg || self.is_zero() || o.is_zero() {
            if self.is_zero() {
                self.neg = o.neg;
            }
            let n = self.digits.len().max(olen);
            self.digits.resize(n, 0);
            let mut carry = 0u8;
            for i in 0..n {
                let s = self.digits[i] + od(i) + carry;
                self.digits[i] = s % 10;
                carry = s / 10;
            }
            if carry > 0 {
                self.digits.push(carry);
            }
        } else {
            // Opposite signs: the larger magnitude minus the smaller.
            let mut other = o.clone();
            other.rescale(scale);
            let (big, small, neg) = match self.cmp_magnitude(&other) {
                Ordering::Equal => {
                    self.digits.clear();
                    self.neg = false;
                    return;
                }
                Ordering::Greater => (std::mem::take(&mut self.digits), other.digits, self.neg),
                Ordering::Less => (other.digits, std::mem::take(&mut self.digits), other.neg),
            };
            let mut out = big;
            let mut borrow = 0i8;
            for (i, d) in out.iter_mut().enumerate() {
                let mut v = *d as i8 - small.get(i).copied().unwrap_or(0) as i8 - borrow;
                borrow = 0;
                if v < 0 {
                    v += 10;
                    borrow = 1;
                }
                *d = v as u8;
            }
            while out.last() == Some(&0) {
                out.pop();
            }
            self.digits = out;
            self.neg = neg;
        }
        if self.is_zero() {
            self.neg = false;
        }
    }
}

impl Decimal {
    /// Parse the text form; None when it is not one (an exponent, spaces,
    /// anything `numeric_out` would not write, except a leading `+` and
    /// leading zeros, which are harmless).
    pub fn parse(s: &str) -> Option<Decimal> {
        match s {
            "NaN" => return Some(Decimal::NaN),
            "Infinity" | "+Infinity" => return Some(Decimal::Infinity),
            "-Infinity" => return Some(Decimal::NegInfinity),
            _ => {}
        }
        let (neg, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() && frac.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let scale = u32::try_from(frac.len()).ok()?;
        let mut digits: Vec<u8> = int
            .bytes()
            .chain(frac.bytes())
            .rev()
            .map(|b| b - b'0')
            .collect();
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let neg = neg && !digits.is_empty();
        Some(Decimal::Finite(Finite { neg, digits, scale }))
    }

    /// An integer, exactly.
    pub fn from_i64(v: i64) -> Decimal {
        Decimal::parse(&v.to_string()).expect("an integer is a decimal")
    }

    /// `self + o` as Postgres' `numeric_add`: the larger scale, exactly;
    /// NaN with a NaN or with both infinities, else an infinity wins.
    pub fn plus(&self, o: &Decimal) -> Decimal {
        let mut sum = DecimalSum::default();
        sum.add(self);
        sum.add(o);
        sum.value().expect("a sum of two values")
    }

    /// `-self` (NaN stays NaN; zero has no sign).
    pub fn negated(&self) -> Decimal {
        match self {
            Decimal::NaN => Decimal::NaN,
            Decimal::Infinity => Decimal::NegInfinity,
            Decimal::NegInfinity => Decimal::Infinity,
            Decimal::Finite(f) => {
                let mut f = f.clone();
                f.neg = !f.neg && !f.is_zero();
                Decimal::Finite(f)
            }
        }
    }

    /// The value a `numeric(precision, scale)` column stores for `self`
    /// (Postgres' `apply_typmod`, 0 ≤ scale ≤ precision): rounded half away
    /// from zero to `scale` digits, refused when it needs more than
    /// `precision - scale` integer digits or is infinite; NaN fits any.
    /// The error is Postgres' DETAIL for [`FIELD_OVERFLOW`].
    pub fn with_typmod(&self, precision: u32, scale: u32) -> Result<Decimal, String> {
        let f = match self {
            Decimal::NaN => return Ok(Decimal::NaN),
            Decimal::Infinity | Decimal::NegInfinity => {
                return Err(format!(
                "A field with precision {precision}, scale {scale} cannot hold an infinite value."
            ))
            }
            Decimal::Finite(f) => f,
        };
        let mut f = f.clone();
        if f.scale > scale {
            let drop = (f.scale - scale) as usize;
            let round_up = f.digits.get(drop - 1).is_some_and(|&d| d >= 5);
            f.digits = f.digits.get(drop..).map(<[u8]>::to_vec).unwrap_or_default();
            f.scale = scale;
            if round_up {
                let mut i = 0;
                loop {
                    if i == f.digits.len() {
                        f.digits.push(1);
                        break;
                    }
                    if f.digits[i] == 9 {
                        f.digits[i] = 0;
                        i += 1;
                    } else {
                        f.digits[i] += 1;
                        break;
                    }
                }
            }
            while f.digits.last() == Some(&0) {
                f.digits.pop();
            }
            if f.is_zero() {
                f.neg = false;
            }
        } else {
            f.rescale(scale);
        }
        let integer_digits = precision - scale;
        if f.top() > integer_digits as i64 {
            let bound = if integer_digits == 0 {
                "1".to_string()
            } else {
                format!("10^{integer_digits}")
            };
            return Err(format!(
                "A field with precision {precision}, scale {scale} must round to an absolute value less than {bound}."
            ));
        }
        Ok(Decimal::Finite(f))
    }

    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite(_) => 1,
            Decimal::Infinity => 2,
            Decimal::NaN => 3,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, o: &Decimal) -> Ordering {
        match (self, o) {
            (Decimal::Finite(a), Decimal::Finite(b)) => match (a.neg, b.neg) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => a.cmp_magnitude(b),
                (true, true) => b.cmp_magnitude(a),
            },
            _ => self.rank().cmp(&o.rank()),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, o: &Decimal) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = match self {
            Decimal::NaN => return f.write_str("NaN"),
            Decimal::Infinity => return f.write_str("Infinity"),
            Decimal::NegInfinity => return f.write_str("-Infinity"),
            Decimal::Finite(d) => d,
        };
        let scale = d.scale as usize;
        let width = d.digits.len().max(scale + 1);
        let mut s = String::with_capacity(width + 2);
        if d.neg {
            s.push('-');
        }
        for i in (0..width).rev() {
            if i + 1 == scale {
                s.push('.');
            }
            s.push((b'0' + d.digits.get(i).copied().unwrap_or(0)) as char);
        }
        f.write_str(&s)
    }
}

/// An exact running sum with Postgres' numeric rules for NaN and the
/// infinities. Empty (no value added) sums to None (SQL NULL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecimalSum {
    seen: bool,
    nan: bool,
    infinity: bool,
    neg_infinity: bool,
    finite: Option<Finite>,
}

impl DecimalSum {
    pub fn add(&mut self, v: &Decimal) {
        self.seen = true;
        match v {
            Decimal::NaN => self.nan = true,
            Decimal::Infinity => self.infinity = true,
            Decimal::NegInfinity => self.neg_infinity = true,
            Decimal::Finite(x) => match &mut self.finite {
                Some(acc) => acc.add(x),
                None => self.finite = Some(x.clone()),
            },
        }
    }

    /// Add another sum (a shard's partial) to this one.
    pub fn merge(&mut self, o: &DecimalSum) {
        self.seen |= o.seen;
        self.nan |= o.nan;
        self.infinity |= o.infinity;
        self.neg_infinity |= o.neg_infinity;
        if let Some(x) = &o.finite {
            match &mut self.finite {
                Some(acc) => acc.add(x),
                None => self.finite = Some(x.clone()),
            }
        }
    }

    pub fn value(&self) -> Option<Decimal> {
        if !self.seen {
            None
        } else if self.nan || (self.infinity && self.neg_infinity) {
            Some(Decimal::NaN)
        } else if self.infinity {
            Some(Decimal::Infinity)
        } else if self.neg_infinity {
            Some(Decimal::NegInfinity)
        } else {
            self.finite.clone().map(Decimal::Finite)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    fn sum(vals: &[&str]) -> Option<String> {
        let mut s = DecimalSum::default();
        for v in vals {
            s.add(&d(v));
        }
        s.value().map(|v| v.to_string())
    }

    #[test]
    fn sums_and_differences_as_numeric_add() {
        let add = |a: &str, b: &str| d(a).plus(&d(b)).to_string();
        let sub = |a: &str, b: &str| d(a).plus(&d(b).negated()).to_string();
        assert_eq!(add("1.50", "1"), "2.50");
        assert_eq!(add("-1.5", "1.5"), "0.0");
        assert_eq!(sub("1", "1.25"), "-0.25");
        assert_eq!(sub("0", "0.00"), "0.00");
        assert_eq!(add("Infinity", "-Infinity"), "NaN");
        assert_eq!(sub("Infinity", "Infinity"), "NaN");
        assert_eq!(sub("5", "-Infinity"), "Infinity");
        assert_eq!(add("NaN", "1"), "NaN");
        assert_eq!(sub("NaN", "NaN"), "NaN");
    }

    #[test]
    fn assignment_to_numeric_typmod() {
        let fit = |v: &str, p: u32, s: u32| d(v).with_typmod(p, s).map(|x| x.to_string());
        assert_eq!(fit("1.005", 12, 2).unwrap(), "1.01");
        assert_eq!(fit("-1.005", 12, 2).unwrap(), "-1.01");
        assert_eq!(fit("-0.004", 12, 2).unwrap(), "0.00");
        assert_eq!(
            fit("9.995", 3, 2).unwrap_err(),
            "A field with precision 3, scale 2 must round to an absolute value less than 10^1."
        );
        assert_eq!(fit("9.994", 3, 2).unwrap(), "9.99");
        assert_eq!(
            fit("99999999.995", 10, 2).unwrap_err(),
            "A field with precision 10, scale 2 must round to an absolute value less than 10^8."
        );
        assert_eq!(fit("0.5", 2, 2).unwrap(), "0.50");
        assert_eq!(
            fit("1", 2, 2).unwrap_err(),
            "A field with precision 2, scale 2 must round to an absolute value less than 1."
        );
        assert_eq!(fit("7", 5, 0).unwrap(), "7");
        assert_eq!(fit("2.5", 5, 0).unwrap(), "3");
        assert_eq!(fit("NaN", 5, 2).unwrap(), "NaN");
        assert_eq!(
            fit("-Infinity", 5, 2).unwrap_err(),
            "A field with precision 5, scale 2 cannot hold an infinite value."
        );
    }

    #[test]
    fn text_round_trips() {
        for s in [
            "0",
            "0.00",
            "1",
            "-1",
            "0.5",
            "-0.05",
            "10.10",
            "123456789012345678901234567890.000100",
            "-99999999999999999999999999999999999999999.9",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("-0.00").to_string(), "0.00");
        assert_eq!(d("007.50").to_string(), "7.50");
        assert_eq!(d("+3").to_string(), "3");
        assert_eq!(d(".5").to_string(), "0.5");
        for bad in [
            "", "-", ".", "1e5", " 1", "1 ", "1.2.3", "nan", "inf", "--1", "0x1",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sums_follow_postgres() {
        assert_eq!(sum(&[]), None);
        assert_eq!(sum(&["1.5", "2.25"]).as_deref(), Some("3.75"));
        assert_eq!(sum(&["1.50", "1"]).as_deref(), Some("2.50"));
        assert_eq!(sum(&["-1.5", "1.50"]).as_deref(), Some("0.00"));
        assert_eq!(sum(&["0.001", "-1"]).as_deref(), Some("-0.999"));
        assert_eq!(
            sum(&["99999999999999999999999999999999.99", "0.01"]).as_deref(),
            Some("100000000000000000000000000000000.00")
        );
        assert_eq!(sum(&["1", "NaN"]).as_deref(), Some("NaN"));
        assert_eq!(sum(&["Infinity", "-Infinity"]).as_deref(), Some("NaN"));
        assert_eq!(sum(&["Infinity", "5"]).as_deref(), Some("Infinity"));
        assert_eq!(sum(&["-Infinity", "5"]).as_deref(), Some("-Infinity"));
        assert_eq!(sum(&["NaN"]).as_deref(), Some("NaN"));
        let mut a = DecimalSum::default();
        a.add(&d("1.1"));
        let mut b = DecimalSum::default();
        b.add(&d("Infinity"));
        a.merge(&b);
        a.merge(&DecimalSum::default());
        assert_eq!(
            a.value().map(|v| v.to_string()).as_deref(),
            Some("Infinity")
        );
    }

    #[test]
    fn order_follows_postgres() {
        let sorted = [
            "-Infinity",
            "-100",
            "-99.99",
            "-0.001",
            "0",
            "0.0001",
            "0.1",
            "1",
            "1.5",
            "10",
            "Infinity",
            "NaN",
        ];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                assert_eq!(d(a).cmp(&d(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(d("1.0").cmp(&d("1.000")), Ordering::Equal);
        assert_eq!(d("-0.0").cmp(&d("0")), Ordering::Equal);
    }

    /// A decimal of at most 18 digits as text with its value in units of
    /// 10^-6.
    fn bounded() -> impl Strategy<Value = (String, i128)> {
        (any::<bool>(), 0i64..1_000_000_000_000, 0u32..=6).prop_map(|(neg, m, scale)| {
            let v = Decimal::parse(&format!("{}{m}", if neg { "-" } else { "" })).unwrap();
            let Decimal::Finite(mut f) = v else {
                unreachable!()
            };
            f.scale = scale;
            let text = Decimal::Finite(f).to_string();
            let units = (if neg { -(m as i128) } else { m as i128 }) * 10i128.pow(6 - scale);
            (text, units)
        })
    }

    fn units(text: &str) -> i128 {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let neg = int.starts_with('-');
        let frac = format!("{frac:0<6}");
        let mag = int.trim_start_matches('-').parse::<i128>().unwrap() * 1_000_000
            + frac.parse::<i128>().unwrap();
        if neg {
            -mag
        } else {
            mag
        }
    }

    proptest! {
        #[test]
        fn sum_and_order_match_integers(vals in proptest::collection::vec(bounded(), 0..40), split in 0usize..40) {
            let mut whole = DecimalSum::default();
            let (mut a, mut b) = (DecimalSum::default(), DecimalSum::default());
            for (i, (t, _)) in vals.iter().enumerate() {
                let v = d(t);
                prop_assert_eq!(units(&v.to_string()), units(t));
                whole.add(&v);
                if i < split { a.add(&v) } else { b.add(&v) }
            }
            a.merge(&b);
            prop_assert_eq!(a.value(), whole.value());
            let expect: i128 = vals.iter().map(|(_, u)| u).sum();
            match whole.value() {
                None => prop_assert!(vals.is_empty()),
                Some(v) => {
                    let text = v.to_string();
                    prop_assert_eq!(units(&text), expect);
                    let max_scale = vals.iter().map(|(t, _)| t.split_once('.').map_or(0, |(_, f)| f.len())).max().unwrap();
                    prop_assert_eq!(text.split_once('.').map_or(0, |(_, f)| f.len()), max_scale);
                    prop_assert!(!text.starts_with("-0") || !text.trim_start_matches(['-', '0', '.']).is_empty());
                }
            }
            for (x, ux) in &vals {
                for (y, uy) in vals.iter().take(5) {
                    prop_assert_eq!(d(x).cmp(&d(y)), ux.cmp(uy));
                }
            }
        }
    }
}
