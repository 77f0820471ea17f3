//! The inert values the pickle reader builds: shared, immutable-once-built
//! trees whose nodes know their depth.

use std::rc::Rc;

/// An unpickled value. Calls (`REDUCE`, `NEWOBJ`) and `BUILD`s are recorded,
/// not performed; the few dict-like constructors are folded into [`Value::Dict`].
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    // Never inspected by the loader; kept so `Debug` dumps show the value.
    Float(#[allow(dead_code)] f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// `module.name`, as named by `GLOBAL` / `STACK_GLOBAL`.
    Global(Rc<(String, String)>),
    Tuple(Node<Vec<Value>>),
    /// Lists, and sets (which nobody here needs to tell apart from lists).
    List(Node<Vec<Value>>),
    Dict(Node<Vec<(Value, Value)>>),
    /// `callable(*args)`: the pair is (callable, args).
    Call(Node<(Value, Value)>),
    /// `obj.__setstate__(state)`: the pair is (obj, state).
    Build(Node<(Value, Value)>),
    /// A persistent id; PyTorch uses these to point at tensor storages.
    PersId(Node<Value>),
}

/// A shared container plus its nesting depth, so depth checks cost O(1).
#[derive(Debug, Clone)]
pub(crate) struct Node<T> {
    pub(super) depth: u32,
    pub(super) inner: Rc<T>,
}

impl<T> std::ops::Deref for Node<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> Node<T> {
    /// Identity of the shared allocation, for visited-sets over the DAG.
    pub(crate) fn addr(&self) -> usize {
        Rc::as_ptr(&self.inner) as *const u8 as usize
    }
}

impl Value {
    pub(super) fn depth(&self) -> u32 {
        match self {
            Value::Tuple(n) | Value::List(n) => n.depth,
            Value::Dict(n) => n.depth,
            Value::Call(n) | Value::Build(n) => n.depth,
            Value::PersId(n) => n.depth,
            _ => 0,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Tuples and lists alike: torch writes sizes as tuples, but be lenient.
    pub(crate) fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(n) | Value::List(n) => Some(n),
            _ => None,
        }
    }

    pub(crate) fn as_dict(&self) -> Option<&Node<Vec<(Value, Value)>>> {
        match self {
            Value::Dict(n) => Some(n),
            _ => None,
        }
    }

    pub(crate) fn as_call(&self) -> Option<(&Value, &Value)> {
        match self {
            Value::Call(n) => Some((&n.0, &n.1)),
            _ => None,
        }
    }

    /// `(object, state)` of a `BUILD`: a pickled class instance and its `__dict__`.
    pub(crate) fn as_build(&self) -> Option<(&Value, &Value)> {
        match self {
            Value::Build(n) => Some((&n.0, &n.1)),
            _ => None,
        }
    }

    pub(crate) fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((&g.0, &g.1)),
            _ => None,
        }
    }

    pub(crate) fn as_pers_id(&self) -> Option<&Value> {
        match self {
            Value::PersId(n) => Some(n),
            _ => None,
        }
    }
}

impl<T: Default> Node<T> {
    /// A fresh empty container (depth 1).
    pub(super) fn empty() -> Self {
        Node {
            depth: 1,
            inner: Rc::new(T::default()),
        }
    }
}
