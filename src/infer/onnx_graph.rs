//! What an ONNX file costs per frame, read from the graph itself rather than guessed: the
//! protobuf is decoded with prost into a hand-declared subset of `onnx.proto` (fields not
//! declared here are skipped), tensor shapes are propagated node by node from a given input
//! size, and every Conv, MatMul and Gemm adds its multiply-adds. GFLOPs = 2 × multiply-adds,
//! the convention of the model zoos. An operator whose effect on shapes is not known here is an
//! error naming it, never a silent zero.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;

use super::manifest::ModelManifest;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("cannot read ONNX file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ONNX model: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: {problem}")]
    Graph { path: PathBuf, problem: String },
    #[error("{path}: cannot propagate shapes through node {node:?} ({op}): {problem}")]
    Node { path: PathBuf, node: String, op: String, problem: String },
}

/// The subset of `onnx.proto` (ONNX IR) needed to follow shapes; tags as in the official file.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
        #[prost(string, tag = "7")]
        pub domain: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(float, tag = "2")]
        pub f: f32,
        #[prost(int64, tag = "3")]
        pub i: i64,
        #[prost(bytes = "vec", tag = "4")]
        pub s: Vec<u8>,
        #[prost(message, optional, tag = "5")]
        pub t: Option<TensorProto>,
        #[prost(float, repeated, tag = "7")]
        pub floats: Vec<f32>,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(int32, repeated, tag = "5")]
        pub int32_data: Vec<i32>,
        #[prost(int64, repeated, tag = "7")]
        pub int64_data: Vec<i64>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorTypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorTypeProto {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::{AttributeProto, NodeProto, TensorProto, ValueInfoProto};

/// ONNX `TensorProto.DataType` codes.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;

fn element_type_name(code: i32) -> &'static str {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => "unknown",
    }
}

/// One axis of a declared graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbol(String),
    Unknown,
}

/// A graph input or output as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub element_type: &'static str,
    pub dims: Vec<Dim>,
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => v.to_string(),
                Dim::Symbol(s) => s.clone(),
                Dim::Unknown => "?".into(),
            })
            .collect();
        write!(f, "{} {} [{}]", self.name, self.element_type, dims.join(", "))
    }
}

/// What one frame costs, and the shapes that come out.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub multiply_adds: u64,
    /// Operator type → (nodes, multiply-adds).
    pub by_op: BTreeMap<String, (usize, u64)>,
    /// Graph outputs with their propagated shapes.
    pub output_shapes: Vec<(String, Vec<usize>)>,
}

impl Cost {
    pub fn gflops(&self) -> f64 {
        2.0 * self.multiply_adds as f64 / 1e9
    }
}

/// A parsed ONNX model.
pub struct OnnxGraph {
    pub path: PathBuf,
    graph: proto::GraphProto,
    pub opsets: Vec<(String, i64)>,
}

/// Constant tensors the shape rules need to read (Reshape targets, Resize scales and sizes, axes).
#[derive(Debug, Clone)]
enum Constant {
    Ints(Vec<i64>),
    Floats(Vec<f32>),
}

fn tensor_constant(t: &TensorProto) -> Option<Constant> {
    let raw = &t.raw_data;
    match t.data_type {
        FLOAT if !raw.is_empty() => {
            Some(Constant::Floats(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
        }
        FLOAT => Some(Constant::Floats(t.float_data.clone())),
        INT64 if !raw.is_empty() => Some(Constant::Ints(
            raw.chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect(),
        )),
        INT64 => Some(Constant::Ints(t.int64_data.clone())),
        INT32 if !raw.is_empty() => {
            Some(Constant::Ints(raw.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect()))
        }
        INT32 => Some(Constant::Ints(t.int32_data.iter().map(|&v| v as i64).collect())),
        _ => None,
    }
}

fn dims_of(t: &TensorProto) -> Result<Vec<usize>, String> {
    t.dims.iter().map(|&d| usize::try_from(d).map_err(|_| format!("tensor {:?} has a negative dimension {d}", t.name))).collect()
}

fn describe_value(v: &ValueInfoProto) -> TensorInfo {
    let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    let dims = tensor
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match (&d.dim_value, &d.dim_param) {
                    (Some(v), _) => Dim::Fixed(*v),
                    (None, Some(p)) if !p.is_empty() => Dim::Symbol(p.clone()),
                    _ => Dim::Unknown,
                })
                .collect()
        })
        .unwrap_or_default();
    TensorInfo { name: v.name.clone(), element_type: element_type_name(tensor.map(|t| t.elem_type).unwrap_or(0)), dims }
}

impl OnnxGraph {
    pub fn load(path: &Path) -> Result<Self, GraphError> {
        let bytes = std::fs::read(path).map_err(|source| GraphError::Read { path: path.to_path_buf(), source })?;
        Self::decode(path, &bytes)
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<Self, GraphError> {
        let model =
            proto::ModelProto::decode(bytes).map_err(|e| GraphError::Decode { path: path.to_path_buf(), message: e.to_string() })?;
        let graph = model.graph.ok_or_else(|| GraphError::Decode { path: path.to_path_buf(), message: "it has no graph".into() })?;
        let opsets =
            model.opset_import.into_iter().map(|o| (if o.domain.is_empty() { "ai.onnx".into() } else { o.domain }, o.version)).collect();
        Ok(OnnxGraph { path: path.to_path_buf(), graph, opsets })
    }

    /// Graph inputs fed at run time (initializers listed as inputs by old exporters are left out).
    pub fn inputs(&self) -> Vec<TensorInfo> {
        let initializers: std::collections::HashSet<&str> = self.graph.initializer.iter().map(|t| t.name.as_str()).collect();
        self.graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(describe_value).collect()
    }

    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.graph.output.iter().map(describe_value).collect()
    }

    /// Propagates shapes from `input_shapes` (every run-time input by name) through the graph.
    pub fn cost(&self, input_shapes: &HashMap<String, Vec<usize>>) -> Result<Cost, GraphError> {
        let graph_err = |problem: String| GraphError::Graph { path: self.path.clone(), problem };
        let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
        let mut constants: HashMap<String, Constant> = HashMap::new();
        for t in &self.graph.initializer {
            shapes.insert(t.name.clone(), dims_of(t).map_err(graph_err)?);
            if let Some(c) = tensor_constant(t) {
                constants.insert(t.name.clone(), c);
            }
        }
        for input in self.inputs() {
            let shape =
                input_shapes.get(&input.name).ok_or_else(|| graph_err(format!("no shape given for graph input {:?}", input.name)))?;
            shapes.insert(input.name.clone(), shape.clone());
        }
        let mut cost = Cost { multiply_adds: 0, by_op: BTreeMap::new(), output_shapes: Vec::new() };
        for node in &self.graph.node {
            let node_err = |problem: String| GraphError::Node {
                path: self.path.clone(),
                node: if node.name.is_empty() { node.output.first().cloned().unwrap_or_default() } else { node.name.clone() },
                op: node.op_type.clone(),
                problem,
            };
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                return Err(node_err(format!("operator domain {:?} is not the standard ONNX one", node.domain)));
            }
            let (outputs, macs) = NodeContext { node, shapes: &shapes, constants: &constants }.propagate().map_err(node_err)?;
            let entry = cost.by_op.entry(node.op_type.clone()).or_default();
            entry.0 += 1;
            entry.1 += macs;
            cost.multiply_adds += macs;
            for (name, shape, constant) in outputs {
                if let Some(c) = constant {
                    constants.insert(name.clone(), c);
                }
                shapes.insert(name, shape);
            }
        }
        for output in &self.graph.output {
            let shape =
                shapes.get(&output.name).ok_or_else(|| graph_err(format!("graph output {:?} is produced by no node", output.name)))?;
            cost.output_shapes.push((output.name.clone(), shape.clone()));
        }
        Ok(cost)
    }
}

/// The cost of one frame at the manifest's input size and batch 1, with the parsed graph.
pub fn cost_for_manifest(manifest: &ModelManifest) -> Result<(OnnxGraph, Cost), GraphError> {
    let graph = OnnxGraph::load(&manifest.onnx)?;
    let mut shapes = HashMap::new();
    for input in graph.inputs() {
        let shape = if input.name == manifest.input.name {
            manifest.input_shape(1).to_vec()
        } else {
            // Any other input must have a fixed size (a dynamic batch counts as 1).
            input
                .dims
                .iter()
                .enumerate()
                .map(|(axis, d)| match d {
                    Dim::Fixed(v) if *v >= 0 => Ok(*v as usize),
                    _ if axis == 0 => Ok(1),
                    _ => Err(GraphError::Graph {
                        path: graph.path.clone(),
                        problem: format!("graph input {input} has a dynamic axis {axis} that the manifest does not size"),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        shapes.insert(input.name.clone(), shape);
    }
    let cost = graph.cost(&shapes)?;
    Ok((graph, cost))
}

/// Output name, shape, and value when it is a constant the later rules may read.
type Produced = (String, Vec<usize>, Option<Constant>);

struct NodeContext<'a> {
    node: &'a NodeProto,
    shapes: &'a HashMap<String, Vec<usize>>,
    constants: &'a HashMap<String, Constant>,
}

/// Operators whose first output has the first input's shape.
const SAME_SHAPE: &[&str] = &[
    "Relu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "Identity",
    "QuantizeLinear",
    "DequantizeLinear",
    "Cast",
    "Softmax",
    "LogSoftmax",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Gelu",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Abs",
    "Erf",
    "Floor",
    "Ceil",
    "Round",
    "Reciprocal",
    "Not",
    "BatchNormalization",
    "InstanceNormalization",
    "LRN",
    "Dropout",
];

/// Element-wise operators with numpy broadcasting over all inputs.
const BROADCAST: &[&str] =
    &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Equal", "Greater", "Less", "And", "Or", "Where"];

const REDUCE: &[&str] = &["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL2"];

fn product(dims: &[usize]) -> u64 {
    dims.iter().map(|&d| d as u64).product()
}

fn normalise_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank).ok_or_else(|| format!("axis {axis} is outside a rank-{rank} tensor"))
}

fn broadcast(shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..rank)
        .map(|i| {
            let mut dims = shapes.iter().filter_map(|s| (i + s.len()).checked_sub(rank).map(|j| s[j]));
            dims.try_fold(1, |acc, d| match acc {
                1 => Ok(d),
                a if d == 1 || d == a => Ok(a),
                a => Err(format!("shapes {shapes:?} do not broadcast ({a} vs {d})")),
            })
        })
        .collect()
}

impl NodeContext<'_> {
    fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attribute(name).map(|a| a.i).unwrap_or(default)
    }

    fn ints(&self, name: &str) -> Option<&[i64]> {
        self.attribute(name).map(|a| a.ints.as_slice())
    }

    fn string(&self, name: &str) -> Option<String> {
        self.attribute(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// Name of input `i` when it is given (ONNX marks skipped optional inputs with "").
    fn input_name(&self, i: usize) -> Option<&str> {
        self.node.input.get(i).map(String::as_str).filter(|n| !n.is_empty())
    }

    fn shape(&self, i: usize) -> Result<&[usize], String> {
        let name = self.input_name(i).ok_or_else(|| format!("input {i} is missing"))?;
        self.shapes
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("input {name:?} has no known shape (is the graph topologically sorted?)"))
    }

    fn constant(&self, i: usize) -> Option<&Constant> {
        self.constants.get(self.input_name(i)?)
    }

    fn constant_ints(&self, i: usize) -> Result<Option<Vec<i64>>, String> {
        match self.constant(i) {
            Some(Constant::Ints(v)) => Ok(Some(v.clone())),
            Some(Constant::Floats(_)) => Err(format!("input {i} should hold integers")),
            None if self.input_name(i).is_some() => Err(format!("input {i} ({:?}) is not a constant", self.input_name(i).unwrap_or(""))),
            None => Ok(None),
        }
    }

    fn first_output(&self) -> Result<String, String> {
        self.node.output.first().cloned().ok_or_else(|| "node has no output".into())
    }

    /// Output shapes (and constants) of the node, and its multiply-adds.
    fn propagate(&self) -> Result<(Vec<Produced>, u64), String> {
        let op = self.node.op_type.as_str();
        let one = |shape: Vec<usize>| -> Result<(Vec<Produced>, u64), String> { Ok((vec![(self.first_output()?, shape, None)], 0)) };
        match op {
            "Conv" => self.conv(),
            "MatMul" => self.matmul(),
            "Gemm" => self.gemm(),
            "AveragePool" | "MaxPool" | "LpPool" => {
                let x = self.shape(0)?;
                let kernel = self.ints("kernel_shape").ok_or("kernel_shape attribute is missing")?.to_vec();
                let (spatial, _) = self.window(x, &kernel)?;
                one([&x[..2], &spatial[..]].concat())
            }
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.shape(0)?;
                one(x.iter().enumerate().map(|(i, &d)| if i < 2 { d } else { 1 }).collect())
            }
            "Reshape" => {
                let x = self.shape(0)?;
                let target = self.constant_ints(1)?.ok_or("the target shape (input 1) is missing")?;
                let allow_zero = self.int("allowzero", 0) != 0;
                let mut out: Vec<i64> = target
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if d == 0 && !allow_zero { x.get(i).map_or(0, |&v| v as i64) } else { d })
                    .collect();
                let known: u64 = out.iter().filter(|&&d| d >= 0).map(|&d| d as u64).product();
                if let Some(free) = out.iter().position(|&d| d == -1) {
                    let total = product(x);
                    if known == 0 || total % known != 0 {
                        return Err(format!("cannot reshape {x:?} to {target:?}"));
                    }
                    out[free] = (total / known) as i64;
                }
                let out: Vec<usize> = out
                    .iter()
                    .map(|&d| usize::try_from(d).map_err(|_| format!("bad target shape {target:?}")))
                    .collect::<Result<_, _>>()?;
                if product(&out) != product(x) {
                    return Err(format!("cannot reshape {x:?} ({} values) to {out:?}", product(x)));
                }
                one(out)
            }
            "Flatten" => {
                let x = self.shape(0)?;
                let axis = normalise_axis(self.int("axis", 1), x.len() + 1)?;
                one(vec![product(&x[..axis]) as usize, product(&x[axis..]) as usize])
            }
            "Concat" => {
                let first = self.shape(0)?.to_vec();
                let axis = normalise_axis(self.attribute("axis").ok_or("axis attribute is missing")?.i, first.len())?;
                let mut out = first.clone();
                for i in 1..self.node.input.len() {
                    let s = self.shape(i)?;
                    if s.len() != first.len() || s.iter().zip(&first).enumerate().any(|(a, (x, y))| a != axis && x != y) {
                        return Err(format!("inputs {first:?} and {s:?} do not concatenate on axis {axis}"));
                    }
                    out[axis] += s[axis];
                }
                one(out)
            }
            "Transpose" => {
                let x = self.shape(0)?;
                let perm: Vec<usize> = match self.ints("perm") {
                    Some(p) => p.iter().map(|&a| normalise_axis(a, x.len())).collect::<Result<_, _>>()?,
                    None => (0..x.len()).rev().collect(),
                };
                if perm.len() != x.len() {
                    return Err(format!("perm {perm:?} does not fit {x:?}"));
                }
                one(perm.iter().map(|&a| x[a]).collect())
            }
            "ArgMax" | "ArgMin" => {
                let x = self.shape(0)?;
                let axis = normalise_axis(self.int("axis", 0), x.len())?;
                let keep = self.int("keepdims", 1) != 0;
                one(x.iter().enumerate().filter_map(|(i, &d)| if i != axis { Some(d) } else { keep.then_some(1) }).collect())
            }
            _ if REDUCE.contains(&op) => {
                let x = self.shape(0)?;
                let axes = match self.ints("axes") {
                    Some(a) => Some(a.to_vec()),
                    None => self.constant_ints(1)?,
                };
                let axes: Vec<usize> = match axes {
                    Some(a) if !a.is_empty() => a.iter().map(|&a| normalise_axis(a, x.len())).collect::<Result<_, _>>()?,
                    _ if self.int("noop_with_empty_axes", 0) != 0 => vec![],
                    _ => (0..x.len()).collect(),
                };
                let keep = self.int("keepdims", 1) != 0;
                one(x.iter().enumerate().filter_map(|(i, &d)| if !axes.contains(&i) { Some(d) } else { keep.then_some(1) }).collect())
            }
            "Resize" | "Upsample" => self.resize(),
            "Squeeze" | "Unsqueeze" => {
                let x = self.shape(0)?;
                let axes = match self.ints("axes") {
                    Some(a) => Some(a.to_vec()),
                    None => self.constant_ints(1)?,
                };
                if op == "Squeeze" {
                    let axes: Vec<usize> = match axes {
                        Some(a) => a.iter().map(|&a| normalise_axis(a, x.len())).collect::<Result<_, _>>()?,
                        None => (0..x.len()).filter(|&i| x[i] == 1).collect(),
                    };
                    one(x.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect())
                } else {
                    let axes = axes.ok_or("axes are missing")?;
                    let rank = x.len() + axes.len();
                    let axes: Vec<usize> = axes.iter().map(|&a| normalise_axis(a, rank)).collect::<Result<_, _>>()?;
                    let mut rest = x.iter();
                    one((0..rank).map(|i| if axes.contains(&i) { 1 } else { rest.next().copied().unwrap_or(1) }).collect())
                }
            }
            "Shape" => {
                let x = self.shape(0)?;
                let values = Constant::Ints(x.iter().map(|&d| d as i64).collect());
                Ok((vec![(self.first_output()?, vec![x.len()], Some(values))], 0))
            }
            "Constant" => {
                let value = self.attribute("value").and_then(|a| a.t.as_ref()).ok_or("only a `value` tensor Constant is supported")?;
                Ok((vec![(self.first_output()?, dims_of(value)?, tensor_constant(value))], 0))
            }
            _ if SAME_SHAPE.contains(&op) => {
                let x = self.shape(0)?.to_vec();
                let constant = if matches!(op, "Identity" | "Cast") { self.constant(0).cloned() } else { None };
                // Every output (e.g. Dropout's mask) has the input's shape.
                Ok((self.node.output.iter().filter(|n| !n.is_empty()).map(|n| (n.clone(), x.clone(), constant.clone())).collect(), 0))
            }
            _ if BROADCAST.contains(&op) => {
                let shapes = (0..self.node.input.len()).map(|i| self.shape(i)).collect::<Result<Vec<_>, _>>()?;
                one(broadcast(&shapes)?)
            }
            _ => Err(format!(
                "edgeseg does not know how {op} changes shapes (known: Conv, MatMul, Gemm, pools, Reshape, Flatten, Concat, \
                 Transpose, ArgMax/ArgMin, Reduce*, Resize, Squeeze, Unsqueeze, Shape, Constant and element-wise operators); \
                 add it to src/infer/onnx_graph.rs"
            )),
        }
    }

    /// Output spatial size of a sliding window (Conv, pools) over input `x` [N, C, spatial...].
    fn window(&self, x: &[usize], kernel: &[i64]) -> Result<(Vec<usize>, Vec<usize>), String> {
        let n = kernel.len();
        if x.len() != n + 2 {
            return Err(format!("a {n}-D kernel does not fit input {x:?}"));
        }
        let ones = vec![1; n];
        let strides = self.ints("strides").map(<[i64]>::to_vec).unwrap_or_else(|| ones.clone());
        let dilations = self.ints("dilations").map(<[i64]>::to_vec).unwrap_or(ones);
        let pads = self.ints("pads").map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; 2 * n]);
        let auto_pad = self.string("auto_pad").unwrap_or_default();
        let ceil_mode = self.int("ceil_mode", 0) != 0;
        if strides.len() != n
            || dilations.len() != n
            || pads.len() != 2 * n
            || kernel.iter().chain(&strides).chain(&dilations).any(|&v| v < 1)
        {
            return Err(format!("kernel {kernel:?}, strides {strides:?}, dilations {dilations:?} and pads {pads:?} do not fit"));
        }
        let kernel: Vec<usize> = kernel.iter().map(|&k| k as usize).collect();
        let out = (0..n)
            .map(|i| {
                let (input, stride, extent) = (x[i + 2] as i64, strides[i], dilations[i] * (kernel[i] as i64 - 1) + 1);
                let size = match auto_pad.as_str() {
                    "SAME_UPPER" | "SAME_LOWER" => (input + stride - 1) / stride,
                    "VALID" => (input - extent) / stride + 1,
                    "" | "NOTSET" => {
                        let span = input + pads[i] + pads[i + n] - extent;
                        if ceil_mode {
                            (span + stride - 1) / stride + 1
                        } else {
                            span.div_euclid(stride) + 1
                        }
                    }
                    other => return Err(format!("auto_pad {other:?} is not an ONNX value")),
                };
                usize::try_from(size).ok().filter(|&s| s > 0).ok_or_else(|| format!("window {kernel:?} leaves nothing of input {x:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((out, kernel))
    }

    fn conv(&self) -> Result<(Vec<Produced>, u64), String> {
        let x = self.shape(0)?;
        let w = self.shape(1)?;
        if w.len() < 3 || x.len() != w.len() {
            return Err(format!("weights {w:?} do not fit input {x:?}"));
        }
        let group = self.int("group", 1).max(1) as usize;
        if x[1] != w[1] * group {
            return Err(format!("input {x:?} has {} channels, weights {w:?} with group {group} expect {}", x[1], w[1] * group));
        }
        let kernel = match self.ints("kernel_shape") {
            Some(k) => k.to_vec(),
            None => w[2..].iter().map(|&k| k as i64).collect(),
        };
        let (spatial, kernel) = self.window(x, &kernel)?;
        let out = [&[x[0], w[0]][..], &spatial[..]].concat();
        let macs = product(&out) * w[1] as u64 * product(&kernel);
        Ok((vec![(self.first_output()?, out, None)], macs))
    }

    fn matmul(&self) -> Result<(Vec<Produced>, u64), String> {
        let (a, b) = (self.shape(0)?, self.shape(1)?);
        if a.is_empty() || b.is_empty() {
            return Err("MatMul of a scalar".into());
        }
        // numpy rules: a vector operand gets a unit axis that is dropped again.
        let a2 = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
        let b2 = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
        let (n, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
        let (k2, m) = (b2[b2.len() - 2], b2[b2.len() - 1]);
        if k != k2 {
            return Err(format!("inner dimensions of {a:?} and {b:?} differ"));
        }
        let batch = broadcast(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]])?;
        let macs = product(&batch) * (n * k * m) as u64;
        let mut out = batch;
        if a.len() > 1 {
            out.push(n);
        }
        if b.len() > 1 {
            out.push(m);
        }
        Ok((vec![(self.first_output()?, out, None)], macs))
    }

    fn gemm(&self) -> Result<(Vec<Produced>, u64), String> {
        let (a, b) = (self.shape(0)?, self.shape(1)?);
        if a.len() != 2 || b.len() != 2 {
            return Err(format!("Gemm needs matrices, got {a:?} and {b:?}"));
        }
        let (m, k) = if self.int("transA", 0) != 0 { (a[1], a[0]) } else { (a[0], a[1]) };
        let (k2, n) = if self.int("transB", 0) != 0 { (b[1], b[0]) } else { (b[0], b[1]) };
        if k != k2 {
            return Err(format!("inner dimensions of {a:?} and {b:?} differ"));
        }
        Ok((vec![(self.first_output()?, vec![m, n], None)], (m * k * n) as u64))
    }

    fn resize(&self) -> Result<(Vec<Produced>, u64), String> {
        let x = self.shape(0)?;
        if self.attribute("axes").is_some() {
            return Err("the axes attribute is not supported".into());
        }
        // Resize-10 and Upsample take (X, scales); Resize-11+ takes (X, roi, scales, sizes).
        let (scales_at, sizes_at) = if self.node.op_type == "Resize" && self.node.input.len() > 2 { (2, Some(3)) } else { (1, None) };
        if let Some(sizes) = sizes_at.map(|i| self.constant_ints(i)).transpose()?.flatten().filter(|s| !s.is_empty()) {
            if sizes.len() != x.len() {
                return Err(format!("sizes {sizes:?} do not fit {x:?}"));
            }
            return Ok((vec![(self.first_output()?, sizes.iter().map(|&s| s.max(0) as usize).collect(), None)], 0));
        }
        let scales = match self.constant(scales_at) {
            Some(Constant::Floats(s)) if s.len() == x.len() => s.clone(),
            Some(_) => return Err(format!("scales (input {scales_at}) do not fit {x:?}")),
            None => return Err(format!("neither constant sizes nor constant scales (input {scales_at}) are given")),
        };
        // ONNX: output = floor(input × scale).
        let out = x.iter().zip(&scales).map(|(&d, &s)| (d as f64 * s as f64).floor() as usize).collect();
        Ok((vec![(self.first_output()?, out, None)], 0))
    }
}

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;

    fn value(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| match d {
                Some(v) => Dimension { dim_value: Some(*v), dim_param: None },
                None => Dimension { dim_value: None, dim_param: Some("N".into()) },
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto { tensor_type: Some(TensorTypeProto { elem_type, shape: Some(TensorShapeProto { dim }) }) }),
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            op_type: op.into(),
            attribute,
            domain: String::new(),
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), ints: v.to_vec(), ..Default::default() }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { name: name.into(), i: v, ..Default::default() }
    }

    fn weights(name: &str, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            raw_data: vec![0; 4 * dims.iter().product::<i64>() as usize],
            ..Default::default()
        }
    }

    /// NHWC uint8 [N, 8, 8, 3] → Transpose → Cast → Conv 3→4 3x3 stride 2 pad 1 → Relu →
    /// GlobalAveragePool → Reshape [-1, 4] → Gemm 4→5 (transB) → MatMul 5→6, plus a Resize x2
    /// branch and an ArgMax output.
    fn model() -> ModelProto {
        let reshape_target =
            TensorProto { name: "target".into(), dims: vec![2], data_type: INT64, int64_data: vec![-1, 4], ..Default::default() };
        let scales = TensorProto {
            name: "scales".into(),
            dims: vec![4],
            data_type: FLOAT,
            float_data: vec![1.0, 1.0, 2.0, 2.0],
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                name: "t".into(),
                node: vec![
                    node("Transpose", &["image"], "nchw", vec![ints("perm", &[0, 3, 1, 2])]),
                    node("Cast", &["nchw"], "float", vec![int("to", 1)]),
                    node("Conv", &["float", "w", "b"], "conv", vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])]),
                    node("Relu", &["conv"], "relu", vec![]),
                    node("Resize", &["relu", "", "scales"], "up", vec![]),
                    node("ArgMax", &["up"], "classes", vec![int("axis", 1), int("keepdims", 0)]),
                    node("GlobalAveragePool", &["relu"], "pooled", vec![]),
                    node("Reshape", &["pooled", "target"], "flat", vec![]),
                    node("Gemm", &["flat", "fc", "fc_b"], "fc_out", vec![int("transB", 1)]),
                    node("MatMul", &["fc_out", "proj"], "features", vec![]),
                ],
                initializer: vec![
                    weights("w", &[4, 3, 3, 3]),
                    weights("b", &[4]),
                    weights("fc", &[5, 4]),
                    weights("fc_b", &[5]),
                    weights("proj", &[5, 6]),
                    reshape_target,
                    scales,
                ],
                input: vec![value("image", 2, &[None, Some(8), Some(8), Some(3)])],
                output: vec![value("classes", INT64, &[None, Some(8), Some(8)]), value("features", FLOAT, &[None, Some(6)])],
            }),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        }
    }

    fn decoded(model: &ModelProto) -> OnnxGraph {
        OnnxGraph::decode(Path::new("t.onnx"), &model.encode_to_vec()).unwrap()
    }

    #[test]
    fn multiply_adds_follow_a_hand_count() {
        let graph = decoded(&model());
        assert_eq!(graph.inputs().iter().map(ToString::to_string).collect::<Vec<_>>(), ["image uint8 [N, 8, 8, 3]"]);
        assert_eq!(graph.outputs()[0].to_string(), "classes int64 [N, 8, 8]");
        let cost = graph.cost(&HashMap::from([("image".to_string(), vec![1, 8, 8, 3])])).unwrap();
        // Conv: 4 output channels × 4×4 positions × 3 input channels × 3×3 taps; Gemm 4×5; MatMul 5×6.
        let conv = 4 * 4 * 4 * 3 * 9;
        assert_eq!(cost.by_op["Conv"], (1, conv));
        assert_eq!(cost.multiply_adds, conv + 20 + 30);
        assert!((cost.gflops() - 2.0 * (conv + 50) as f64 / 1e9).abs() < 1e-15);
        assert_eq!(cost.output_shapes, vec![("classes".to_string(), vec![1, 8, 8]), ("features".to_string(), vec![1, 6])]);
        // Twice the batch, twice the convolution.
        let cost2 = graph.cost(&HashMap::from([("image".to_string(), vec![2, 8, 8, 3])])).unwrap();
        assert_eq!(cost2.by_op["Conv"].1, 2 * conv);
    }

    #[test]
    fn unknown_operator_and_broken_graphs_are_named() {
        let mut m = model();
        let g = m.graph.as_mut().unwrap();
        g.node.insert(4, node("NonMaxSuppression", &["relu"], "nms", vec![]));
        let err = decoded(&m).cost(&HashMap::from([("image".to_string(), vec![1, 8, 8, 3])])).unwrap_err().to_string();
        assert!(err.contains("t.onnx") && err.contains("\"nms\" (NonMaxSuppression)") && err.contains("does not know"), "{err}");

        let mut m = model();
        m.graph.as_mut().unwrap().initializer[0].dims = vec![4, 2, 3, 3];
        let err = decoded(&m).cost(&HashMap::from([("image".to_string(), vec![1, 8, 8, 3])])).unwrap_err().to_string();
        assert!(err.contains("(Conv)") && err.contains("has 3 channels"), "{err}");

        let err = OnnxGraph::decode(Path::new("junk.onnx"), b"\xff\xff\xff").err().unwrap().to_string();
        assert!(err.contains("junk.onnx is not an ONNX model"), "{err}");
    }

    /// The fixture networks of scripts/make_models.py, counted by hand from its layer list.
    #[test]
    fn fixture_models_match_their_hand_count() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let conv = |cout: u64, cin: u64, k: u64, side: u64| cout * cin * k * k * side * side;
        // small: colour 1x1 3→21 at 64² (after the 4x4 pool); tower 3→32 /2 (128²), 32→32 /2
        // (64²), 7 × 32→32 at 64², head 1x1 32→21 at 64².
        let small = conv(21, 3, 1, 64) + conv(32, 3, 3, 128) + 8 * conv(32, 32, 3, 64) + conv(21, 32, 1, 64);
        // large: colour 1x1 3→21 at 256²; tower 3→32 /2 (128²), 9 × 32→32 at 128², head 32→21.
        let large = conv(21, 3, 1, 256) + conv(32, 3, 3, 128) + 9 * conv(32, 32, 3, 128) + conv(21, 32, 1, 128);
        for (name, expected) in [("small", small), ("large", large)] {
            let path = root.join(format!("{name}.onnx"));
            assert!(path.is_file(), "{} is missing: run scripts/fixtures (make test does)", path.display());
            let cost = OnnxGraph::load(&path).unwrap().cost(&HashMap::from([("input".to_string(), vec![1, 3, 256, 256])])).unwrap();
            assert_eq!(cost.multiply_adds, expected, "{name}");
            assert_eq!(cost.output_shapes, vec![("logits".to_string(), vec![1, 21, 256, 256])]);
        }
        assert_eq!(2 * small, 638_312_448);
        assert_eq!(2 * large, 2_776_498_176);
    }
}
