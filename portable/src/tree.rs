//! `ai.onnx.ml` `TreeEnsembleClassifier` and `TreeEnsembleRegressor` (opsets 1 and 3), with
//! ONNX Runtime's aggregation semantics: trees summed in tree-id order, each leaf's weights
//! in attribute order, in `f32`; base values, the binary single-class case and the post
//! transforms as ONNX Runtime applies them. One row never reads another, so a row's bits do
//! not depend on its batch.

use crate::kernels::softmax_row;
use crate::ops::Attrs;
use crate::PortableError;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

#[derive(Debug, Clone)]
struct TreeNode {
    feature: usize,
    value: f32,
    mode: Mode,
    on_true: usize,
    on_false: usize,
    missing_true: bool,
    /// `(target or class index, weight)` of a leaf, in attribute order.
    weights: Vec<(usize, f32)>,
}

/// A node as the traversal reads it: compact, leaves pointing into one weight list.
#[derive(Debug, Clone, Copy)]
struct Packed {
    feature: u32,
    value: f32,
    mode: Mode,
    missing_true: bool,
    /// Branches: the true and false children. Leaves: the range of their weights.
    a: u32,
    b: u32,
}

/// A node of the fixed-depth walk (see [`Forest::walk`]): branches as in [`Packed`], a leaf
/// pointing at itself on both sides, so `depth` steps of `x <= value ? a : b` from a root end
/// on its leaf whatever the path, with no test for leaves.
#[derive(Debug, Clone, Copy)]
struct Step {
    feature: u32,
    value: f32,
    a: u32,
    b: u32,
}

/// Rows walked through each tree together (see [`Forest::scores`]).
const ROWS_AT_ONCE: usize = 16;

/// How scores are transformed after aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// The trees of one ensemble.
#[derive(Debug, Clone)]
pub(crate) struct Forest {
    nodes: Vec<TreeNode>,
    packed: Vec<Packed>,
    leaf_weights: Vec<(usize, f32)>,
    /// Every branch is `BRANCH_LEQ` (scikit-learn's trees): a loop without the mode switch.
    all_leq: bool,
    /// For forests whose branches are all `BRANCH_LEQ` (and that read at least one feature):
    /// the nodes as [`Step`]s and each tree's depth, for the fixed-depth walk.
    walk: Option<(Vec<Step>, Vec<u32>)>,
    /// Where every leaf has exactly one weight: per node, a leaf's `(target, weight)` (read
    /// in one load instead of through its weight range).
    single: Option<Vec<(usize, f32)>>,
    roots: Vec<usize>,
    /// Features read by any branch: the input needs at least `max + 1` columns.
    width: usize,
}

fn invalid(op: &str, message: impl std::fmt::Display) -> PortableError {
    PortableError::Invalid(format!("{op}: {message}"))
}

impl Forest {
    fn build(op: &str, a: &Attrs, prefix: &str) -> Result<(Self, Vec<usize>), PortableError> {
        let tree_ids = a.ints("nodes_treeids")?;
        let node_ids = a.ints("nodes_nodeids")?;
        let features = a.ints("nodes_featureids")?;
        let values = match a.floats_opt("nodes_values")? {
            Some(v) => v,
            None => a
                .tensor_floats("nodes_values_as_tensor")?
                .ok_or_else(|| invalid(op, "no nodes_values"))?,
        };
        let modes = a.strings("nodes_modes")?;
        let trues = a.ints("nodes_truenodeids")?;
        let falses = a.ints("nodes_falsenodeids")?;
        let missing = a.ints_opt("nodes_missing_value_tracks_true")?.unwrap_or_default();
        let n = tree_ids.len();
        for (name, len) in [
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_values", values.len()),
            ("nodes_modes", modes.len()),
            ("nodes_truenodeids", trues.len()),
            ("nodes_falsenodeids", falses.len()),
        ] {
            if len != n {
                return Err(invalid(op, format!("{name} has {len} entries, nodes_treeids {n}")));
            }
        }
        if !missing.is_empty() && missing.len() != n {
            return Err(invalid(
                op,
                "nodes_missing_value_tracks_true does not match nodes_treeids",
            ));
        }
        let mut index = BTreeMap::new();
        for i in 0..n {
            if index.insert((tree_ids[i], node_ids[i]), i).is_some() {
                return Err(invalid(
                    op,
                    format!("node ({}, {}) defined twice", tree_ids[i], node_ids[i]),
                ));
            }
        }
        let mut nodes = Vec::with_capacity(n);
        let mut width = 0;
        for i in 0..n {
            let mode = match modes[i].as_str() {
                "BRANCH_LEQ" => Mode::Leq,
                "BRANCH_LT" => Mode::Lt,
                "BRANCH_GTE" => Mode::Gte,
                "BRANCH_GT" => Mode::Gt,
                "BRANCH_EQ" => Mode::Eq,
                "BRANCH_NEQ" => Mode::Neq,
                "LEAF" => Mode::Leaf,
                other => return Err(invalid(op, format!("node mode '{other}' is unknown"))),
            };
            let child = |id: i64| -> Result<usize, PortableError> {
                index.get(&(tree_ids[i], id)).copied().ok_or_else(|| {
                    invalid(
                        op,
                        format!("node ({}, {}) points at missing node {id}", tree_ids[i], node_ids[i]),
                    )
                })
            };
            let (on_true, on_false, feature) = if mode == Mode::Leaf {
                (i, i, 0)
            } else {
                let f = usize::try_from(features[i]).map_err(|_| invalid(op, "negative feature id"))?;
                width = width.max(f + 1);
                (child(trues[i])?, child(falses[i])?, f)
            };
            nodes.push(TreeNode {
                feature,
                value: values[i],
                mode,
                on_true,
                on_false,
                missing_true: missing.get(i).is_some_and(|&m| m != 0),
                weights: Vec::new(),
            });
        }
        // Roots: per tree, the node no other node of that tree points at (ONNX Runtime's
        // rule); trees in increasing tree id.
        let mut pointed = vec![false; n];
        for node in &nodes {
            if node.mode != Mode::Leaf {
                pointed[node.on_true] = true;
                pointed[node.on_false] = true;
            }
        }
        let mut roots_by_tree: BTreeMap<i64, usize> = BTreeMap::new();
        for (&(tree, _), &i) in &index {
            if !pointed[i] && roots_by_tree.insert(tree, i).is_some() {
                return Err(invalid(op, format!("tree {tree} has more than one root")));
            }
        }
        let trees: std::collections::BTreeSet<i64> = tree_ids.iter().copied().collect();
        if roots_by_tree.len() != trees.len() {
            return Err(invalid(op, "a tree has no root (its nodes form a cycle)"));
        }
        let w_tree = a.ints(&format!("{prefix}_treeids"))?;
        let w_node = a.ints(&format!("{prefix}_nodeids"))?;
        let w_id = a.ints(&format!("{prefix}_ids"))?;
        let w_val = match a.floats_opt(&format!("{prefix}_weights"))? {
            Some(v) => v,
            None => a
                .tensor_floats(&format!("{prefix}_weights_as_tensor"))?
                .ok_or_else(|| invalid(op, format!("no {prefix}_weights")))?,
        };
        if w_node.len() != w_tree.len() || w_id.len() != w_tree.len() || w_val.len() != w_tree.len() {
            return Err(invalid(op, format!("{prefix}_* attributes differ in length")));
        }
        let mut ids = Vec::with_capacity(w_tree.len());
        for k in 0..w_tree.len() {
            let i = *index
                .get(&(w_tree[k], w_node[k]))
                .ok_or_else(|| invalid(op, format!("weight for missing node ({}, {})", w_tree[k], w_node[k])))?;
            let id = usize::try_from(w_id[k]).map_err(|_| invalid(op, format!("negative {prefix}_ids entry")))?;
            nodes[i].weights.push((id, w_val[k]));
            ids.push(id);
        }
        if nodes.len() > u32::MAX as usize || width > u32::MAX as usize {
            return Err(invalid(op, "too many nodes"));
        }
        let mut leaf_weights = Vec::new();
        let packed: Vec<Packed> = nodes
            .iter()
            .map(|n| {
                let (a, b) = if n.mode == Mode::Leaf {
                    let start = leaf_weights.len();
                    leaf_weights.extend_from_slice(&n.weights);
                    (start as u32, leaf_weights.len() as u32)
                } else {
                    (n.on_true as u32, n.on_false as u32)
                };
                Packed {
                    feature: n.feature as u32,
                    value: n.value,
                    mode: n.mode,
                    missing_true: n.missing_true,
                    a,
                    b,
                }
            })
            .collect();
        let all_leq = nodes
            .iter()
            .all(|n| matches!(n.mode, Mode::Leq | Mode::Leaf) && !n.missing_true);
        let roots: Vec<usize> = roots_by_tree.into_values().collect();
        let walk = if all_leq && width > 0 {
            Self::steps(&packed, &roots)
        } else {
            None
        };
        let single = nodes
            .iter()
            .all(|n| n.mode != Mode::Leaf || n.weights.len() == 1)
            .then(|| {
                nodes
                    .iter()
                    .map(|n| n.weights.first().copied().unwrap_or((0, 0.0)))
                    .collect()
            });
        Ok((
            Self {
                nodes,
                packed,
                leaf_weights,
                all_leq,
                walk,
                single,
                roots,
                width,
            },
            ids,
        ))
    }

    /// The fixed-depth walk of `packed` (all `BRANCH_LEQ`): leaves loop onto themselves, and
    /// each tree's depth is its longest path. `None` when a tree loops (the ordinary walk then
    /// reports it for the rows that reach the loop).
    fn steps(packed: &[Packed], roots: &[usize]) -> Option<(Vec<Step>, Vec<u32>)> {
        let steps = packed
            .iter()
            .enumerate()
            .map(|(i, n)| match n.mode {
                Mode::Leaf => Step {
                    feature: 0,
                    value: 0.0,
                    a: i as u32,
                    b: i as u32,
                },
                _ => Step {
                    feature: n.feature,
                    value: n.value,
                    a: n.a,
                    b: n.b,
                },
            })
            .collect();
        // Each node's height (longest path to a leaf), computed once per node (nodes may be
        // shared, so paths are never enumerated); reaching a node still in progress is a loop.
        const NEW: u32 = u32::MAX;
        const OPEN: u32 = u32::MAX - 1;
        let mut height = vec![NEW; packed.len()];
        for &root in roots {
            let mut stack = vec![root];
            while let Some(&at) = stack.last() {
                let node = packed[at];
                if node.mode == Mode::Leaf {
                    height[at] = 0;
                    stack.pop();
                    continue;
                }
                let (a, b) = (node.a as usize, node.b as usize);
                if height[at] == NEW {
                    height[at] = OPEN;
                    for child in [a, b] {
                        match height[child] {
                            OPEN => return None,
                            NEW => stack.push(child),
                            _ => {}
                        }
                    }
                    continue;
                }
                if height[a] >= OPEN || height[b] >= OPEN {
                    // A child is not done: it is on the path above this node.
                    return None;
                }
                height[at] = 1 + height[a].max(height[b]);
                stack.pop();
            }
        }
        let depths = roots.iter().map(|&r| height[r]).collect();
        Some((steps, depths))
    }

    /// The weights of the leaf a row reaches in the tree rooted at `root`. `row` has at least
    /// `width` columns (checked by the caller).
    fn leaf(&self, root: usize, row: &[f32]) -> Result<&[(usize, f32)], PortableError> {
        let mut at = root;
        for _ in 0..=self.packed.len() {
            let node = self.packed[at];
            let x = row[node.feature as usize];
            let go_true = match node.mode {
                Mode::Leaf => return Ok(&self.leaf_weights[node.a as usize..node.b as usize]),
                _ if self.all_leq => x <= node.value,
                _ if x.is_nan() => node.missing_true,
                Mode::Leq => x <= node.value,
                Mode::Lt => x < node.value,
                Mode::Gte => x >= node.value,
                Mode::Gt => x > node.value,
                Mode::Eq => x == node.value,
                Mode::Neq => x != node.value,
            };
            at = if go_true { node.a } else { node.b } as usize;
        }
        Err(PortableError::Runtime("tree ensemble: a tree loops".into()))
    }

    /// The weights of leaf node `leaf`, in attribute order.
    #[inline(always)]
    fn weights(&self, leaf: u32) -> &[(usize, f32)] {
        match &self.single {
            Some(single) => std::slice::from_ref(&single[leaf as usize]),
            None => {
                let node = self.packed[leaf as usize];
                &self.leaf_weights[node.a as usize..node.b as usize]
            }
        }
    }

    /// Per row and target (`rows.len() × targets`, row-major), the aggregated leaf weights
    /// and whether any leaf gave one. Each row's weights are aggregated in tree order, each
    /// leaf's in attribute order, whatever the batch. Where the forest has a fixed-depth walk,
    /// [`ROWS_AT_ONCE`] rows go through each tree together: their walks and their sums are
    /// independent of one another, so their latencies overlap.
    fn scores(&self, rows: &[&[f32]], targets: usize, aggregate: Aggregate) -> Result<Vec<(f32, bool)>, PortableError> {
        if targets == 0 {
            return Err(PortableError::Runtime("tree ensemble: no targets".into()));
        }
        let mut out = vec![(0.0, false); rows.len() * targets];
        let add = |out: &mut [(f32, bool)], weights: &[(usize, f32)]| {
            for &(t, w) in weights {
                let slot = &mut out[t];
                slot.0 = match aggregate {
                    Aggregate::Sum | Aggregate::Average => slot.0 + w,
                    Aggregate::Min if slot.1 && slot.0 <= w => slot.0,
                    Aggregate::Max if slot.1 && slot.0 >= w => slot.0,
                    Aggregate::Min | Aggregate::Max => w,
                };
                slot.1 = true;
            }
        };
        let Some((steps, depths)) = &self.walk else {
            for (row, o) in rows.iter().zip(out.chunks_exact_mut(targets)) {
                for &root in &self.roots {
                    add(o, self.leaf(root, row)?);
                }
            }
            return Ok(out);
        };
        let full = rows.len() / ROWS_AT_ONCE * ROWS_AT_ONCE;
        let (blocks, rest) = out.split_at_mut(full * targets);
        for (block, o) in rows
            .chunks_exact(ROWS_AT_ONCE)
            .zip(blocks.chunks_exact_mut(ROWS_AT_ONCE * targets))
        {
            let block: &[&[f32]; ROWS_AT_ONCE] = match block.try_into() {
                Ok(b) => b,
                Err(_) => unreachable!("chunks of ROWS_AT_ONCE rows"),
            };
            for (&root, &depth) in self.roots.iter().zip(depths) {
                let at = walk(steps, block, [root as u32; ROWS_AT_ONCE], depth);
                for (&leaf, o) in at.iter().zip(o.chunks_exact_mut(targets)) {
                    add(o, self.weights(leaf));
                }
            }
        }
        // Fewer rows than a block: each row through ROWS_AT_ONCE trees at a time instead.
        for (row, o) in rows[full..].iter().zip(rest.chunks_exact_mut(targets)) {
            for (roots, depths) in self.roots.chunks(ROWS_AT_ONCE).zip(depths.chunks(ROWS_AT_ONCE)) {
                let mut at = [0u32; ROWS_AT_ONCE];
                for (a, &r) in at.iter_mut().zip(roots) {
                    *a = r as u32;
                }
                let deepest = depths.iter().copied().max().unwrap_or(0);
                let at = walk(steps, &[*row; ROWS_AT_ONCE], at, deepest);
                for &leaf in at.iter().take(roots.len()) {
                    add(o, self.weights(leaf));
                }
            }
        }
        Ok(out)
    }
}

/// `depth` steps of the fixed-depth walk from each of `at`, lane `i` reading `rows[i]`; the
/// lanes are independent, so their loads and comparisons overlap.
#[inline(always)]
fn walk<const R: usize>(steps: &[Step], rows: &[&[f32]; R], mut at: [u32; R], depth: u32) -> [u32; R] {
    for _ in 0..depth {
        for (a, row) in at.iter_mut().zip(rows) {
            let s = steps[*a as usize];
            *a = if row[s.feature as usize] <= s.value { s.a } else { s.b };
        }
    }
    at
}

fn post_transform(op: &str, a: &Attrs) -> Result<PostTransform, PortableError> {
    match a.string_opt("post_transform")?.as_deref().unwrap_or("NONE") {
        "NONE" => Ok(PostTransform::None),
        "LOGISTIC" => Ok(PostTransform::Logistic),
        "SOFTMAX" => Ok(PostTransform::Softmax),
        "SOFTMAX_ZERO" => Ok(PostTransform::SoftmaxZero),
        other => Err(PortableError::Unsupported {
            ops: vec![format!("{op} with post_transform {other}")],
        }),
    }
}

/// ONNX Runtime's logistic: `v = 1 / (1 + e^-|x|)`, `x < 0 ? 1 - v : v`.
fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + crate::expf::expf(-x.abs()));
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

fn softmax_zero(scores: &mut [f32]) {
    let m = scores.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let exp_neg_max = crate::expf::expf(-m);
    let mut s = 0f32;
    for v in scores.iter_mut() {
        if *v > 0.000_000_1 || *v < -0.000_000_1 {
            *v = crate::expf::expf(*v - m);
            s += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    for v in scores.iter_mut() {
        *v /= s;
    }
}

fn transform(scores: &mut [f32], pt: PostTransform) {
    match pt {
        PostTransform::None => {}
        PostTransform::Logistic => scores.iter_mut().for_each(|v| *v = logistic(*v)),
        PostTransform::Softmax => softmax_row(scores),
        PostTransform::SoftmaxZero => softmax_zero(scores),
    }
}

/// The rows of a `[N, C]` (or `[C]`) FP32 input, checked against the features the trees read.
fn rows<'a>(
    op: &str,
    x: &'a [f32],
    shape: &[usize],
    width: usize,
) -> Result<(usize, std::slice::ChunksExact<'a, f32>), PortableError> {
    let (n, c) = match shape {
        [c] => (1, *c),
        [n, c] => (*n, *c),
        _ => {
            return Err(PortableError::Runtime(format!(
                "{op}: input must be [N, C], got {shape:?}"
            )))
        }
    };
    if c < width {
        return Err(PortableError::Runtime(format!(
            "{op}: input has {c} features, the trees read feature {}",
            width - 1
        )));
    }
    Ok((n, x.chunks_exact(c.max(1))))
}

/// `TreeEnsembleClassifier` with integer class labels.
#[derive(Debug, Clone)]
pub(crate) struct Classifier {
    forest: Forest,
    labels: Vec<i64>,
    base: Vec<f32>,
    post: PostTransform,
    binary_case: bool,
    weights_all_positive: bool,
}

impl Classifier {
    pub(crate) fn build(a: &Attrs) -> Result<Self, PortableError> {
        let op = "TreeEnsembleClassifier";
        if a.has("classlabels_strings") {
            return Err(PortableError::Unsupported {
                ops: vec![format!("{op} with string class labels")],
            });
        }
        let labels = a.ints("classlabels_int64s")?;
        if labels.is_empty() {
            return Err(invalid(op, "no class labels"));
        }
        let (forest, ids) = Forest::build(op, a, "class")?;
        if let Some(&bad) = ids.iter().find(|&&id| id >= labels.len()) {
            return Err(invalid(op, format!("class id {bad} but {} labels", labels.len())));
        }
        let distinct: std::collections::BTreeSet<usize> = ids.iter().copied().collect();
        let weights_all_positive = forest.nodes.iter().all(|n| n.weights.iter().all(|&(_, w)| w >= 0.0));
        Ok(Self {
            binary_case: labels.len() == 2 && distinct.len() == 1,
            weights_all_positive,
            base: a.floats_opt("base_values")?.unwrap_or_default(),
            post: post_transform(op, a)?,
            forest,
            labels,
        })
    }

    /// Labels `[N]` and scores `[N, classes]` of every row.
    pub(crate) fn run(&self, x: &[f32], shape: &[usize]) -> Result<(Vec<i64>, Vec<f32>, usize), PortableError> {
        let (n, rows) = rows("TreeEnsembleClassifier", x, shape, self.forest.width)?;
        let classes = self.labels.len();
        let mut labels = Vec::with_capacity(n);
        let mut scores = Vec::with_capacity(n * classes.max(2));
        let rows: Vec<&[f32]> = rows.take(n).collect();
        for buf in self
            .forest
            .scores(&rows, classes, Aggregate::Sum)?
            .chunks_exact(classes)
        {
            let mut p = buf.to_vec();
            if classes > 2 {
                for (k, &b) in self.base.iter().enumerate().take(classes) {
                    p[k] = if p[k].1 { (p[k].0 + b, true) } else { (b, true) };
                }
                let mut best: Option<(usize, f32)> = None;
                for (k, &(s, has)) in p.iter().enumerate() {
                    if has && best.is_none_or(|(_, m)| s > m) {
                        best = Some((k, s));
                    }
                }
                labels.push(best.map_or(self.labels[0], |(k, _)| self.labels[k]));
                let mut row_scores: Vec<f32> = p.iter().map(|&(s, _)| s).collect();
                transform(&mut row_scores, self.post);
                scores.extend(row_scores);
                continue;
            }
            let (label, row_scores) = self.binary(p);
            labels.push(label);
            scores.extend(row_scores);
        }
        Ok((labels, scores, classes.max(2)))
    }

    /// ONNX Runtime's two-class finalisation (one or two classes carrying scores).
    fn binary(&self, mut p: Vec<(f32, bool)>) -> (i64, Vec<f32>) {
        p.resize(2, (0.0, false));
        let mut additional = -1;
        let mut single = false;
        match self.base.len() {
            2 if p[1].1 => {
                p[1] = (self.base[1] + p[0].0, true);
                p[0].0 = -p[1].0;
            }
            2 => {
                p[1].0 += self.base[1];
                p[0].0 += self.base[0];
            }
            1 => {
                p[0].0 += self.base[0];
                single = !p[1].1;
            }
            0 => {
                additional = 3;
                single = !p[1].1;
            }
            _ => {}
        }
        let pos_weight = if !single && p[1].1 {
            p[1].0
        } else if p[0].1 {
            p[0].0
        } else {
            0.0
        };
        let label = if self.binary_case {
            if self.weights_all_positive {
                if pos_weight > 0.5 {
                    additional = 0;
                    self.labels[1]
                } else {
                    additional = 1;
                    self.labels[0]
                }
            } else if pos_weight > 0.0 {
                additional = 2;
                self.labels[1]
            } else {
                additional = 3;
                self.labels[0]
            }
        } else if pos_weight > 0.0 {
            self.labels[1]
        } else {
            self.labels[0]
        };
        if !single {
            let mut s = vec![p[0].0, p[1].0];
            transform(&mut s, self.post);
            return (label, s);
        }
        let s0 = p[0].0;
        let scores = match additional {
            0 | 1 => vec![1.0 - s0, s0],
            2 | 3 if self.post == PostTransform::Logistic => vec![logistic(-s0), logistic(s0)],
            2 => vec![-s0, s0],
            3 => vec![s0, -s0],
            _ => vec![s0, 0.0],
        };
        (label, scores)
    }
}

/// `TreeEnsembleRegressor`.
#[derive(Debug, Clone)]
pub(crate) struct Regressor {
    forest: Forest,
    targets: usize,
    base: Vec<f32>,
    aggregate: Aggregate,
    post: PostTransform,
}

impl Regressor {
    pub(crate) fn build(a: &Attrs) -> Result<Self, PortableError> {
        let op = "TreeEnsembleRegressor";
        let targets = usize::try_from(a.int_opt("n_targets")?.unwrap_or(1))
            .ok()
            .filter(|&t| (1..=1 << 16).contains(&t))
            .ok_or_else(|| invalid(op, "n_targets must be 1 to 65536"))?;
        let (forest, ids) = Forest::build(op, a, "target")?;
        if let Some(&bad) = ids.iter().find(|&&id| id >= targets) {
            return Err(invalid(op, format!("target id {bad} but n_targets {targets}")));
        }
        let aggregate = match a.string_opt("aggregate_function")?.as_deref().unwrap_or("SUM") {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => return Err(invalid(op, format!("aggregate_function '{other}' is unknown"))),
        };
        let post = post_transform(op, a)?;
        if targets > 1 {
            // Not matched against ONNX Runtime yet: outside the portable set until it is.
            return Err(PortableError::Unsupported {
                ops: vec![format!("{op} with n_targets {targets} (only 1 is portable)")],
            });
        }
        if post != PostTransform::None {
            return Err(PortableError::Unsupported {
                ops: vec![format!("{op} with one target and a post_transform")],
            });
        }
        Ok(Self {
            base: a.floats_opt("base_values")?.unwrap_or_default(),
            forest,
            targets,
            aggregate,
            post,
        })
    }

    /// Predictions `[N, targets]`.
    pub(crate) fn run(&self, x: &[f32], shape: &[usize]) -> Result<(Vec<f32>, usize), PortableError> {
        let (n, rows) = rows("TreeEnsembleRegressor", x, shape, self.forest.width)?;
        let trees = self.forest.roots.len() as f32;
        let mut out = Vec::with_capacity(n * self.targets);
        let rows: Vec<&[f32]> = rows.take(n).collect();
        for p in self
            .forest
            .scores(&rows, self.targets, self.aggregate)?
            .chunks_exact(self.targets)
        {
            if self.targets == 1 {
                let origin = if self.base.len() == 1 { self.base[0] } else { 0.0 };
                let (s, has) = p[0];
                out.push(match self.aggregate {
                    Aggregate::Sum => s + origin,
                    Aggregate::Average => s / trees + origin,
                    Aggregate::Min | Aggregate::Max if has => s + origin,
                    Aggregate::Min | Aggregate::Max => origin,
                });
                continue;
            }
            let use_base = self.base.len() == self.targets;
            let mut s: Vec<f32> = p
                .iter()
                .enumerate()
                .map(|(k, &(s, has))| {
                    let b = if use_base { self.base[k] } else { 0.0 };
                    match self.aggregate {
                        Aggregate::Sum if use_base => s + b,
                        Aggregate::Sum => s,
                        Aggregate::Average if use_base => s / trees + b,
                        Aggregate::Average => s / trees,
                        Aggregate::Min | Aggregate::Max => (if has { s } else { 0.0 }) + b,
                    }
                })
                .collect();
            transform(&mut s, self.post);
            out.extend(s);
        }
        Ok((out, self.targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(a: u32, b: u32) -> Packed {
        Packed {
            feature: 0,
            value: 0.5,
            mode: Mode::Leq,
            missing_true: false,
            a,
            b,
        }
    }

    fn leaf() -> Packed {
        Packed {
            feature: 0,
            value: 0.0,
            mode: Mode::Leaf,
            missing_true: false,
            a: 0,
            b: 0,
        }
    }

    #[test]
    fn depths_of_shared_nodes_are_computed_once_and_loops_are_found() {
        // 200 branches, each with both children the next node: 2^200 paths, 200 levels.
        let mut chain: Vec<Packed> = (0..200).map(|i| branch(i + 1, i + 1)).collect();
        chain.push(leaf());
        let started = std::time::Instant::now();
        let (_, depths) = Forest::steps(&chain, &[0]).expect("no loop");
        assert_eq!(depths, vec![200]);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Unequal depths: 0 -> (1 -> leaves 3, 4), leaf 2; a second tree that is one leaf.
        let tree = vec![branch(1, 2), branch(3, 4), leaf(), leaf(), leaf(), leaf()];
        assert_eq!(Forest::steps(&tree, &[0, 5]).expect("no loop").1, vec![2, 0]);
        // 0 -> 1 -> 0: a loop; no fixed-depth walk (the ordinary walk reports it per row).
        assert!(Forest::steps(&[branch(1, 2), branch(0, 2), leaf()], &[0]).is_none());
    }
}
