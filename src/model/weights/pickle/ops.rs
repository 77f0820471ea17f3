//! The opcode dispatch loop of the pickle reader.

use std::rc::Rc;

use super::{Node, PickleError, Value, Vm};

impl Vm<'_> {
    /// Runs opcodes up to `STOP` and returns the value on top of the stack.
    pub(super) fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_start = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                // FRAME: only a read-ahead hint.
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(
                            line.parse()
                                .map_err(|_| self.err(format!("bad integer {line:?}")))?,
                        ),
                    };
                    self.push(v);
                }
                b'L' => {
                    let v = self.text_int()?;
                    self.push(Value::Int(v));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    let v = self.long(bytes);
                    self.push(v);
                }
                0x8b => {
                    let n = self.len_i32()?;
                    let bytes = self.take(n)?;
                    let v = self.long(bytes);
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line
                        .parse()
                        .map_err(|_| self.err(format!("bad float {line:?}")))?;
                    self.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.len_u32()?,
                        0x8c => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let bytes = self.take(n)?;
                    let v = self.string(bytes)?;
                    self.push(v);
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.len_i32()?
                    } else {
                        self.u8()? as usize
                    };
                    let bytes = self.take(n)?;
                    self.push(Self::py2_string(bytes));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.len_u32()?,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let bytes = self.take(n)?;
                    self.push(Value::Bytes(bytes.into()));
                }
                b'c' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    self.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = (module.to_owned(), name.to_owned());
                    self.push(Value::Global(Rc::new(g)));
                }
                b')' => self.push(self.tuple(Vec::new())?),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(self.tuple(items)?);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(self.tuple(items)?);
                }
                b']' | 0x8f => self.push(Value::List(Node::empty())),
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let d = items.iter().map(Value::depth).max().unwrap_or(0);
                    self.push(Value::List(self.node(items, d)?));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], false)?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, false)?;
                }
                b'}' => self.push(Value::Dict(Node::empty())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(self.dict(pairs)?);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(vec![k, v], true)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, true)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_put(i)?;
                }
                b'p' => {
                    let i = self.text_int()?;
                    let i = u32::try_from(i).map_err(|_| self.err("bad memo index"))?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo too large"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.push(v);
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.array()?);
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'g' => {
                    let i = self.text_int()?;
                    let i = u32::try_from(i).map_err(|_| self.err("bad memo index"))?;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(self.call(callable, args)?);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push(self.call(class, args)?);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push(self.call(class, args)?);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    // Instance attributes of a dict (an OrderedDict's
                    // `_metadata`) are not items: drop them.
                    let v = if matches!(obj, Value::Dict(_)) {
                        obj
                    } else {
                        Value::Build(self.pair_node(obj, state)?)
                    };
                    self.push(v);
                }
                b'Q' => {
                    let id = self.pop()?;
                    let v = Value::PersId(self.node(id.clone(), id.depth())?);
                    self.pers_ids.push(id);
                    self.push(v);
                }
                b'P' => {
                    let id = Value::Str(self.line()?.into());
                    let v = Value::PersId(self.node(id.clone(), 0)?);
                    self.pers_ids.push(id);
                    self.push(v);
                }
                other => {
                    return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}")));
                }
            }
        }
    }
}
