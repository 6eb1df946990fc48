//! What a component exports and imports, read from its binary without
//! compiling it: `wasmparser` validates the component's structure and types
//! (function bodies are not validated, no code is generated) and its type
//! information is mapped to the same [`FunctionSig`]/[`WitType`] the
//! compiled component yields (`tests/exports.rs` checks they agree for every
//! committed component). `plan` type-checks init arguments and links
//! blueprints from this; only `run` compiles, when it installs a component.
//!
//! The link check needs the host's verdict on a component's imports. It gets
//! it from the component's *import prefix*: the bytes of the component up to
//! the end of its last top-level import section. That prefix is itself a
//! valid component with the same imports (a component validates section by
//! section), and in what `wit-component` produces it holds only types,
//! aliases and imports, so wasmtime builds it without generating any code.

use super::{FunctionSig, WitType};
use wasmparser::component_types::{ComponentAnyTypeId, ComponentDefinedType, ComponentEntityType, ComponentFuncTypeId, ComponentValType};
use wasmparser::types::TypesRef;
use wasmparser::{Encoding, Parser, Payload, PrimitiveValType, ValidPayload, Validator};

/// A component's interface, decoded from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The exported functions, named and ordered as the runtime lists a
    /// compiled component's (`f`, `iface#f`).
    pub functions: Vec<FunctionSig>,
    /// Top-level exports, in order.
    pub exports: Vec<(String, Item)>,
    /// Top-level imports, in order.
    pub imports: Vec<(String, Item)>,
    /// Length of the import prefix (see the module docs).
    pub import_prefix_len: usize,
}

/// The kind of an imported or exported item (what linking looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Func,
    /// A value type (record, enum, …) or a function type.
    Type,
    Resource,
    /// An instance and its items, in order.
    Instance(Vec<(String, Item)>),
    /// A module, component or value.
    Other(&'static str),
}

impl Item {
    /// The names of an instance's items (empty for anything else).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let items: &[(String, Item)] = match self {
            Item::Instance(items) => items,
            _ => &[],
        };
        items.iter().map(|(n, _)| n.as_str())
    }
}

/// Why a component could not be decoded: it is not a valid component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes `bytes` (a WASM component). Validates everything but function
/// bodies; cost is a parse of the section headers and types, with code and
/// data skipped.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let err = |e: wasmparser::BinaryReaderError| DecodeError(format!("not a valid WebAssembly component: {e}"));
    let mut validator = Validator::new();
    let mut depth = 0usize;
    let mut import_names = Vec::new();
    let mut export_names = Vec::new();
    let mut import_prefix_len = 8;
    let mut types = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(err)?;
        match &payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && *encoding != Encoding::Component {
                    return Err(DecodeError("a core WebAssembly module, not a component; wrap it with `wasm-tools component new`".into()));
                }
                depth += 1;
            }
            Payload::ComponentImportSection(r) if depth == 1 => {
                for i in r.clone() {
                    import_names.push(i.map_err(err)?.name.name.to_string());
                }
                import_prefix_len = r.range().end;
            }
            Payload::ComponentExportSection(r) if depth == 1 => {
                for e in r.clone() {
                    export_names.push(e.map_err(err)?.name.name.to_string());
                }
            }
            _ => {}
        }
        let ended = matches!(payload, Payload::End(_));
        // Function bodies are handed back for validation; they are skipped.
        if let ValidPayload::End(t) = validator.payload(&payload).map_err(err)? {
            if depth == 1 {
                types = Some(t);
            }
        }
        if ended {
            depth -= 1;
        }
    }
    let types = types.ok_or_else(|| DecodeError("not a valid WebAssembly component: it ends early".into()))?;
    let types = types.as_ref();
    let item_of = |name: &str, import: bool| {
        let found = if import { types.component_item_for_import(name) } else { types.component_item_for_export(name) };
        found.map(|i| item(types, &i.ty)).unwrap_or(Item::Other("unknown"))
    };
    // A type import with an `eq` bound is only a name for a known type, not
    // something to link (wasmtime lists no such import either).
    let imports: Vec<(String, Item)> = import_names
        .into_iter()
        .map(|n| {
            let i = item_of(&n, true);
            (n, i)
        })
        .filter(|(_, i)| *i != Item::Type)
        .collect();
    let mut functions = Vec::new();
    let mut exports = Vec::new();
    for name in export_names {
        let Some(ty) = types.component_item_for_export(&name).map(|i| &i.ty) else { continue };
        match ty {
            ComponentEntityType::Func(f) => functions.push(sig(types, name.clone(), *f)),
            ComponentEntityType::Instance(i) => {
                for (fname, fitem) in &types[*i].exports {
                    if let ComponentEntityType::Func(f) = &fitem.ty {
                        functions.push(sig(types, format!("{name}#{fname}"), *f));
                    }
                }
            }
            _ => {}
        }
        exports.push((name.clone(), item(types, ty)));
    }
    Ok(Decoded { functions, exports, imports, import_prefix_len })
}

impl Decoded {
    /// The import prefix of `bytes` (the bytes this was decoded from).
    pub fn import_prefix<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[..self.import_prefix_len.min(bytes.len())]
    }

    /// The top-level export called `name`.
    pub fn export(&self, name: &str) -> Option<&Item> {
        self.exports.iter().find(|(n, _)| n == name).map(|(_, i)| i)
    }
}

fn item(types: TypesRef<'_>, ty: &ComponentEntityType) -> Item {
    match ty {
        ComponentEntityType::Func(_) => Item::Func,
        ComponentEntityType::Type { created: ComponentAnyTypeId::Resource(_), .. } => Item::Resource,
        ComponentEntityType::Type { .. } => Item::Type,
        ComponentEntityType::Instance(i) => {
            Item::Instance(types[*i].exports.iter().map(|(n, it)| (n.to_string(), item(types, &it.ty))).collect())
        }
        ComponentEntityType::Module(_) => Item::Other("module"),
        ComponentEntityType::Component(_) => Item::Other("component"),
        ComponentEntityType::Value(_) => Item::Other("value"),
    }
}

fn sig(types: TypesRef<'_>, name: String, f: ComponentFuncTypeId) -> FunctionSig {
    let f = &types[f];
    FunctionSig {
        name,
        params: f.params.iter().map(|(n, t)| (n.to_string(), val(types, t))).collect(),
        results: f.result.iter().map(|t| val(types, t)).collect(),
    }
}

fn val(types: TypesRef<'_>, t: &ComponentValType) -> WitType {
    match t {
        ComponentValType::Primitive(p) => primitive(*p),
        ComponentValType::Type(id) => defined(types, &types[*id]),
    }
}

fn primitive(p: PrimitiveValType) -> WitType {
    match p {
        PrimitiveValType::Bool => WitType::Bool,
        PrimitiveValType::S8 => WitType::S8,
        PrimitiveValType::U8 => WitType::U8,
        PrimitiveValType::S16 => WitType::S16,
        PrimitiveValType::U16 => WitType::U16,
        PrimitiveValType::S32 => WitType::S32,
        PrimitiveValType::U32 => WitType::U32,
        PrimitiveValType::S64 => WitType::S64,
        PrimitiveValType::U64 => WitType::U64,
        PrimitiveValType::F32 => WitType::F32,
        PrimitiveValType::F64 => WitType::F64,
        PrimitiveValType::Char => WitType::Char,
        PrimitiveValType::String => WitType::String,
        PrimitiveValType::ErrorContext => unsupported("error-context"),
    }
}

fn unsupported(what: &str) -> WitType {
    WitType::Unsupported { what: what.into() }
}

/// The same mapping as `wit::wit_type` on wasmtime's types.
fn defined(types: TypesRef<'_>, d: &ComponentDefinedType) -> WitType {
    let boxed = |t: &ComponentValType| Box::new(val(types, t));
    match d {
        ComponentDefinedType::Primitive(p) => primitive(*p),
        ComponentDefinedType::Record(r) => {
            WitType::Record { fields: r.fields.iter().map(|(n, t)| (n.to_string(), val(types, t))).collect() }
        }
        ComponentDefinedType::Variant(v) => {
            WitType::Variant { cases: v.cases.iter().map(|(n, c)| (n.to_string(), c.ty.as_ref().map(|t| val(types, t)))).collect() }
        }
        ComponentDefinedType::List { element, .. } => WitType::List { element: boxed(element) },
        ComponentDefinedType::Map { .. } => unsupported("map"),
        ComponentDefinedType::FixedLengthList { .. } => unsupported("fixed-length list"),
        ComponentDefinedType::Tuple(t) => WitType::Tuple { items: t.types.iter().map(|t| val(types, t)).collect() },
        ComponentDefinedType::Flags(names) => WitType::Flags { names: names.iter().map(|n| n.to_string()).collect() },
        ComponentDefinedType::Enum(cases) => WitType::Enum { cases: cases.iter().map(|n| n.to_string()).collect() },
        ComponentDefinedType::Option { ty, .. } => WitType::Option { inner: boxed(ty) },
        ComponentDefinedType::Result { ok, err, .. } => WitType::Result { ok: ok.as_ref().map(boxed), err: err.as_ref().map(boxed) },
        ComponentDefinedType::Own(_) => unsupported("own<resource>"),
        ComponentDefinedType::Borrow(_) => unsupported("borrow<resource>"),
        ComponentDefinedType::Future { .. } => unsupported("future"),
        ComponentDefinedType::Stream { .. } => unsupported("stream"),
    }
}
