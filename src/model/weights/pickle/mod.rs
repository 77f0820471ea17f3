//! A pickle reader that builds an inert value tree and never executes anything.
//!
//! Why not `candle_core::pickle::Stack`: it panics on wide `LONG1` integers
//! (the legacy PyTorch magic number is a 10-byte one), allocates whatever a
//! string length field claims before checking it, deep-clones on every memo
//! get, and lacks opcodes that real checkpoints use (protocol 4 framing, py2
//! strings). Here every read is bounds-checked against the input slice, values
//! share structure through `Rc`, and nesting depth and copy work are capped,
//! so any input yields a value or an error in time and memory linear in its
//! length.
//!
//! Semantics differ from CPython in one deliberate way: the memo stores a
//! snapshot (copy-on-write), so mutating a container after memoizing it is not
//! seen through later `GET`s. Picklers memoize containers before filling them,
//! so shared *containers* come back empty; shared immutable things (classes,
//! strings, persistent ids) are exact. State dicts never rely on the former.

mod ops;
mod value;

use std::collections::HashMap;
use std::rc::Rc;

pub(crate) use value::{Node, Value};

/// Deepest container nesting accepted. State dicts nest a handful of levels;
/// the cap keeps recursive drops and walks far from the stack limit.
const MAX_DEPTH: u32 = 192;

/// Why a pickle could not be read, and the byte offset of the failing opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PickleError {
    pub(crate) offset: usize,
    pub(crate) truncated: bool,
    pub(crate) reason: String,
}

/// The result of reading one pickle from the front of a byte slice.
pub(crate) struct Unpickled {
    pub(crate) value: Value,
    /// Every persistent id met, in order: the legacy format needs the storage
    /// types of *all* storages, including ones only optimizer state uses.
    pub(crate) pers_ids: Vec<Value>,
    /// Bytes consumed, up to and including `STOP`.
    pub(crate) len: usize,
}

/// Reads one pickle from the start of `data`; trailing bytes are left alone.
pub(crate) fn load(data: &[u8]) -> Result<Unpickled, PickleError> {
    let mut vm = Vm {
        data,
        pos: 0,
        op_start: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        pers_ids: Vec::new(),
        // Copy-on-write may duplicate shared containers; legit pickles almost
        // never pay this, hostile ones must not turn N bytes into N² cells.
        copy_budget: data.len().saturating_mul(4).saturating_add(1 << 16),
    };
    let value = vm.run()?;
    Ok(Unpickled {
        value,
        pers_ids: vm.pers_ids,
        len: vm.pos,
    })
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pers_ids: Vec<Value>,
    copy_budget: usize,
}

impl<'a> Vm<'a> {
    fn err(&self, reason: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_start,
            truncated: false,
            reason: reason.into(),
        }
    }

    fn truncated(&self) -> PickleError {
        PickleError {
            offset: self.op_start,
            truncated: true,
            reason: "input ends in the middle of the pickle".into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(self.truncated());
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.array::<1>()?[0])
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn len_i32(&mut self) -> Result<usize, PickleError> {
        let n = i32::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.err(format!("negative length {n}")))
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.array()?);
        // Anything beyond usize cannot fit in the input; `take` reports it.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// A text argument, without its trailing `\n` (and `\r`).
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.truncated());
        };
        self.pos += n + 1;
        let line = rest[..n].strip_suffix(b"\r").unwrap_or(&rest[..n]);
        std::str::from_utf8(line).map_err(|_| self.err("text argument is not UTF-8"))
    }

    fn text_int(&mut self) -> Result<i64, PickleError> {
        let line = self.line()?;
        let digits = line.strip_suffix('L').unwrap_or(line);
        digits
            .parse()
            .map_err(|_| self.err(format!("bad integer {line:?}")))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        let err = self.err("stack underflow");
        self.stack.last_mut().ok_or(err)
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err("no MARK on the stack"));
        };
        Ok(self.stack.split_off(mark))
    }

    fn node<T>(&self, inner: T, child_depth: u32) -> Result<Node<T>, PickleError> {
        let depth = child_depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH}")));
        }
        Ok(Node {
            depth,
            inner: Rc::new(inner),
        })
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value, PickleError> {
        let d = items.iter().map(Value::depth).max().unwrap_or(0);
        Ok(Value::Tuple(self.node(items, d)?))
    }

    fn pair_node(&self, a: Value, b: Value) -> Result<Node<(Value, Value)>, PickleError> {
        let d = a.depth().max(b.depth());
        self.node((a, b), d)
    }

    fn dict(&self, pairs: Vec<(Value, Value)>) -> Result<Value, PickleError> {
        let d = pairs
            .iter()
            .map(|(k, v)| k.depth().max(v.depth()))
            .max()
            .unwrap_or(0);
        Ok(Value::Dict(self.node(pairs, d)?))
    }

    fn pairs(&self, flat: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !flat.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        let mut it = flat.into_iter();
        let mut out = Vec::with_capacity(it.len() / 2);
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    /// Appends to the list or dict on top of the stack. Objects of other
    /// classes receiving items are list/dict subclasses: keep their items.
    fn extend_top(&mut self, items: Vec<Value>, dict: bool) -> Result<(), PickleError> {
        let items_depth = items.iter().map(Value::depth).max().unwrap_or(0);
        let depth = items_depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH}")));
        }
        let (pairs, items) = if dict {
            (self.pairs(items)?, Vec::new())
        } else {
            (Vec::new(), items)
        };
        let kind_err = self.err(if dict {
            "SETITEM(S) on a non-dict"
        } else {
            "APPEND(S) on a non-list"
        });
        let budget_err = self.err("pickle copies too much shared data");
        let mut budget = self.copy_budget;
        let top = self.top()?;
        if matches!(top, Value::Call(_) | Value::Build(_)) {
            *top = if dict {
                Value::Dict(Node::empty())
            } else {
                Value::List(Node::empty())
            };
        }
        match top {
            Value::Dict(n) if dict => {
                budget = charge(budget, &n.inner).ok_or(budget_err)?;
                n.depth = n.depth.max(depth);
                Rc::make_mut(&mut n.inner).extend(pairs);
            }
            Value::List(n) if !dict => {
                budget = charge(budget, &n.inner).ok_or(budget_err)?;
                n.depth = n.depth.max(depth);
                Rc::make_mut(&mut n.inner).extend(items);
            }
            _ => return Err(kind_err),
        }
        self.copy_budget = budget;
        Ok(())
    }

    /// `callable(*args)`, folding the dict constructors torch uses so state
    /// dicts come out as plain [`Value::Dict`]s.
    fn call(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        if let Some((module, name)) = callable.as_global() {
            let dict_like = matches!(
                (module, name),
                ("collections", "OrderedDict" | "defaultdict")
                    | ("builtins" | "__builtin__", "dict")
            );
            if dict_like {
                // OrderedDict([(k, v), ...]) in old protocols; usually `()`.
                let mut pairs = Vec::new();
                if name != "defaultdict" {
                    if let Some(items) = args.as_seq().and_then(|a| a.first()?.as_seq()) {
                        for item in items {
                            if let Some([k, v]) = item.as_seq() {
                                pairs.push((k.clone(), v.clone()));
                            }
                        }
                    }
                }
                return self.dict(pairs);
            }
        }
        Ok(Value::Call(self.pair_node(callable, args)?))
    }

    fn memo_get(&self, idx: u32) -> Result<Value, PickleError> {
        self.memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.err(format!("memo entry {idx} was never stored")))
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn string(&self, bytes: &[u8]) -> Result<Value, PickleError> {
        let s = std::str::from_utf8(bytes).map_err(|_| self.err("string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }

    /// Python 2 `str`: text when it decodes, else bytes (as torch does).
    fn py2_string(bytes: &[u8]) -> Value {
        match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(s.into()),
            Err(_) => Value::Bytes(bytes.into()),
        }
    }

    fn long(&self, bytes: &[u8]) -> Value {
        if bytes.len() <= 8 {
            let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut buf = [fill; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            Value::Int(i64::from_le_bytes(buf))
        } else {
            Value::BigInt(bytes.into())
        }
    }
}

/// Charges a copy-on-write of `inner` (if it is shared) against `budget`.
fn charge<T>(budget: usize, inner: &Rc<Vec<T>>) -> Option<usize> {
    if Rc::strong_count(inner) > 1 {
        budget.checked_sub(inner.len())
    } else {
        Some(budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_legacy_magic_number() {
        let p = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.trailing";
        let un = load(p).unwrap();
        assert!(matches!(un.value, Value::BigInt(ref b) if b.len() == 10));
        assert_eq!(un.len, 15);
        // Small LONG1s are sign-extended.
        assert!(matches!(
            load(b"\x8a\x01\xff.").unwrap().value,
            Value::Int(-1)
        ));
        assert!(matches!(
            load(b"\x8a\x02\xff\x00.").unwrap().value,
            Value::Int(255)
        ));
    }

    #[test]
    fn ordered_dict_becomes_a_dict_and_build_state_is_dropped() {
        // OrderedDict() with one item, then BUILD with {'_metadata': ...}.
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aK\x07s}X\x09\x00\x00\x00_metadataNsb.";
        let v = load(p).unwrap().value;
        let d = v.as_dict().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0.as_str(), Some("a"));
        assert_eq!(d[0].1.as_int(), Some(7));
    }

    #[test]
    fn memo_holds_snapshots() {
        // [] put 0, append 1, get 0 -> the memo copy is still empty.
        let v = load(b"]q\x00K\x01ah\x00\x86.").unwrap().value;
        let items = v.as_seq().unwrap();
        assert_eq!(items[0].as_seq().unwrap().len(), 1);
        assert_eq!(items[1].as_seq().unwrap().len(), 0);
    }

    #[test]
    fn errors_not_panics() {
        let cases: &[(&[u8], bool)] = &[
            (b"", true),
            (b"\x80", true),
            (b"X\xff\xff\xff\xff", true),
            (b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff", true),
            (b"cmodule_without_newline", true),
            (b"K\x01", true),
            (b"\xfe.", false),
            (b".", false),
            (b"t.", false),
            (b"h\x05.", false),
            (b"K\x01K\x02K\x03u.", false),
            (b"(\x85.", false),
            (b"\x80\x09.", false),
        ];
        for (bytes, truncated) in cases {
            let e = load(bytes)
                .err()
                .unwrap_or_else(|| panic!("{bytes:?} loaded"));
            assert_eq!(e.truncated, *truncated, "{bytes:?}: {e:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = vec![b']'; 10_000];
        p.extend(std::iter::repeat_n(b'a', 9_999));
        p.push(b'.');
        let e = load(&p).err().unwrap();
        assert!(e.reason.contains("nesting"), "{e:?}");
    }

    #[test]
    fn copy_on_write_is_budgeted() {
        // A 200-item list memoized, then GET + APPEND over and over: each
        // append copies the shared list.
        let mut p = b"](".to_vec();
        p.extend(std::iter::repeat_n(*b"K\x01", 200).flatten());
        p.extend(b"eq\x00");
        for _ in 0..2000 {
            p.extend(b"h\x00K\x02a0");
        }
        p.push(b'.');
        let e = load(&p).err().unwrap();
        assert!(e.reason.contains("copies"), "{e:?}");
    }
}
