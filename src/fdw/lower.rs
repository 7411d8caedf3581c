//! Lowering: a scan's restriction clauses (Postgres planner expressions)
//! into the core's predicate IR, as far as the core's pushdown rulebook
//! (`conductor_core::pushdown`) allows; everything else stays a local
//! filter. This file only reads planner nodes: which operator a clause
//! uses, the types of its sides and its input collation; whether a node may
//! evaluate it is the rulebook's answer.
//!
//! A value side that is not a constant (a `$n` parameter, an outer relation's
//! column in a parameterized nested loop, a stable function call) becomes a
//! runtime parameter: the expression is evaluated when the scan starts and
//! routing happens then, so generic plans still reach one shard.

use crate::catalog::TableTopology;
use crate::convert::{column_type_of, typed_from_datum};
use conductor_core::predicate::{
    like_to_glob, CmpOp, ListOperand, Operand, Pred, MAX_CONDITION_ARGUMENTS,
};
use conductor_core::pushdown::{self, CollationClass};
use conductor_core::types::{ColumnType, TypedValue};
use pgrx::prelude::*;
use pgrx::PgList;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::ffi::CStr;

/// A runtime parameter: the type its value is converted with, and whether
/// it is an array (the list of an `= ANY(…)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub ty: ColumnType,
    pub list: bool,
}

/// Lowers the clauses of one scan; collects the runtime parameters they use.
pub struct Lowering<'a> {
    topology: &'a TableTopology,
    scan_relid: i32,
    /// Expressions evaluated at scan start; `Operand::Param(i)` is `params[i]`.
    pub params: Vec<(*mut pg_sys::Expr, ParamSpec)>,
    /// Lowering a HAVING clause: the "columns" are these expressions (the
    /// grouped rows' grouping columns and aggregates, by position), with
    /// the type of their values; the scan's own columns are none.
    outputs: Option<Vec<(*mut pg_sys::Node, ColumnType)>>,
    /// Lowering the clauses of a join: the inner table and its range-table
    /// index; its columns follow the outer table's (`plan::JoinQuery`), and
    /// a comparison of two columns may be pushed.
    inner: Option<(&'a TableTopology, i32)>,
    /// The most arguments the clauses pushed so far bind in the statement
    /// (`Pred::max_arguments`, times `copies`), counted over every clause
    /// lowered for it: a clause that would take it past
    /// `MAX_CONDITION_ARGUMENTS` stays in Postgres.
    pub arguments: usize,
    /// How many times the clauses being lowered are written in the
    /// statement (an aggregate's FILTER, once per partial result).
    pub copies: usize,
}

pub(crate) fn is(node: *const pg_sys::Node, tag: pg_sys::NodeTag) -> bool {
    // SAFETY: callers pass valid node pointers (or null, checked here).
    !node.is_null() && unsafe { (*node).type_ } == tag
}

/// `node` without the relabellings that keep the meaning of its values
/// (varchar read as text, a COLLATE clause). A binary-compatible cast into
/// another pushdown family stays: text or varchar read as bpchar compares,
/// sorts and groups without trailing spaces, an integer read as oid orders
/// unsigned, so `t::bpchar` must not be taken for the column `t`.
pub(crate) fn strip_relabel(mut node: *mut pg_sys::Node) -> *mut pg_sys::Node {
    while is(node, pg_sys::NodeTag::T_RelabelType) {
        // SAFETY: the tag says it is a RelabelType; its arg is an expression.
        let (to, arg) = unsafe {
            let r = node as *mut pg_sys::RelabelType;
            ((*r).resulttype, (*r).arg as *mut pg_sys::Node)
        };
        // SAFETY: exprType reads a valid expression node.
        let from = unsafe { pg_sys::exprType(arg) };
        let same_family = match (column_type_of(to), column_type_of(from)) {
            (Some(to), Some(from)) => pushdown::family(to) == pushdown::family(from),
            _ => false,
        };
        if !same_family {
            break;
        }
        node = arg;
    }
    node
}

pub(crate) unsafe fn list_nodes(list: *mut pg_sys::List) -> Vec<*mut pg_sys::Node> {
    // SAFETY: the caller passes a List of nodes (or NIL).
    unsafe { PgList::<pg_sys::Node>::from_pg(list).iter_ptr().collect() }
}

thread_local! {
    /// Whether the database's default collation compares like C (bytes).
    static DEFAULT_COLLATION_IS_C: Cell<Option<bool>> = const { Cell::new(None) };
}

pub fn default_collation_is_c() -> bool {
    if let Some(known) = DEFAULT_COLLATION_IS_C.with(|c| c.get()) {
        return known;
    }
    let is_c = Spi::get_one::<bool>(
        "SELECT datlocprovider = 'c' AND datcollate IN ('C', 'POSIX')
           FROM pg_catalog.pg_database WHERE datname = current_database()",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    DEFAULT_COLLATION_IS_C.with(|c| c.set(Some(is_c)));
    is_c
}

/// The rulebook's class of a comparison's input collation.
pub fn collation_class(collid: pg_sys::Oid) -> CollationClass {
    if collid == pg_sys::Oid::INVALID {
        // A type without collations, or text between conflicting ones.
        return CollationClass::Unresolved;
    }
    // SAFETY: a syscache lookup of an existing collation.
    if !unsafe { pg_sys::get_collation_isdeterministic(collid) } {
        return CollationClass::Nondeterministic;
    }
    if collid == pg_sys::C_COLLATION_OID
        || collid == pg_sys::POSIX_COLLATION_OID
        || (collid == pg_sys::DEFAULT_COLLATION_OID && default_collation_is_c())
    {
        CollationClass::C
    } else {
        CollationClass::Deterministic
    }
}

/// A built-in operator's name (user-defined operators can mean anything,
/// so they have none here).
fn opname(opno: pg_sys::Oid) -> Option<String> {
    if opno.to_u32() >= pg_sys::FirstNormalObjectId {
        return None;
    }
    // SAFETY: a syscache lookup; the name is copied before use.
    unsafe {
        let p = pg_sys::get_opname(opno);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

fn comparison(opno: pg_sys::Oid) -> Option<CmpOp> {
    pushdown::comparison(&opname(opno)?)
}

impl<'a> Lowering<'a> {
    pub fn new(topology: &'a TableTopology, scan_relid: u32) -> Self {
        Lowering {
            topology,
            scan_relid: scan_relid as i32,
            params: Vec::new(),
            outputs: None,
            inner: None,
            arguments: 0,
            copies: 1,
        }
    }

    /// A lowering of the clauses of a join of the outer table `topology`
    /// (range-table index `outer_relid`) with `inner`.
    pub fn over_join(
        topology: &'a TableTopology,
        outer_relid: u32,
        inner: &'a TableTopology,
        inner_relid: u32,
    ) -> Self {
        Lowering {
            inner: Some((inner, inner_relid as i32)),
            ..Self::new(topology, outer_relid)
        }
    }

    /// A lowering of clauses over grouped rows: `outputs[i]` (a grouping
    /// column or an aggregate call, with its value's type) is column `i`.
    pub fn over_outputs(
        topology: &'a TableTopology,
        scan_relid: u32,
        outputs: Vec<(*mut pg_sys::Node, ColumnType)>,
    ) -> Self {
        Lowering {
            outputs: Some(outputs),
            ..Self::new(topology, scan_relid)
        }
    }

    /// The clause in IR, or None when it must stay local. A failed attempt
    /// leaves no parameters behind.
    ///
    /// # Safety
    /// `clause` must be a valid expression tree of the planner.
    pub unsafe fn lower(&mut self, clause: *mut pg_sys::Node) -> Option<Pred> {
        let mark = self.params.len();
        let lowered = unsafe { self.pred(clause) }.filter(|pred| {
            let params = &self.params;
            let json_param = |i: usize| pushdown::travels_as_json(params[i].1.ty);
            let arguments = self.arguments + pred.max_arguments(&json_param) * self.copies;
            let fits = arguments <= MAX_CONDITION_ARGUMENTS;
            if fits {
                self.arguments = arguments;
            }
            fits
        });
        if lowered.is_none() {
            self.params.truncate(mark);
        }
        lowered
    }

    /// The column index (into topology.columns) and type of a Var of this scan.
    unsafe fn column(&self, node: *mut pg_sys::Node) -> Option<(usize, ColumnType)> {
        let node = strip_relabel(node);
        if let Some(outputs) = &self.outputs {
            // SAFETY: equal() compares two valid expression trees.
            return outputs.iter().enumerate().find_map(|(i, (e, ty))| {
                unsafe { pg_sys::equal(strip_relabel(*e).cast(), node.cast()) }.then_some((i, *ty))
            });
        }
        if !is(node, pg_sys::NodeTag::T_Var) {
            return None;
        }
        // SAFETY: tag checked.
        let var = unsafe { &*(node as *mut pg_sys::Var) };
        if var.varlevelsup != 0 || var.varattno <= 0 {
            return None;
        }
        let (topology, offset) = match self.inner {
            _ if var.varno == self.scan_relid => (self.topology, 0),
            Some((inner, relid)) if var.varno == relid => (inner, self.topology.columns.len()),
            _ => return None,
        };
        let index = topology
            .columns
            .iter()
            .position(|c| c.attnum == var.varattno)?;
        Some((offset + index, topology.columns[index].ty))
    }

    /// Whether an expression mentions a column of this scan.
    unsafe fn mentions_scan(&self, node: *mut pg_sys::Node) -> bool {
        // SAFETY: pull_var_clause walks a valid tree and returns a new list.
        unsafe {
            let flags = pg_sys::PVC_RECURSE_AGGREGATES
                | pg_sys::PVC_RECURSE_WINDOWFUNCS
                | pg_sys::PVC_RECURSE_PLACEHOLDERS;
            list_nodes(pg_sys::pull_var_clause(node, flags as i32))
                .into_iter()
                .any(|v| {
                    let var = &*(v as *mut pg_sys::Var);
                    is(v, pg_sys::NodeTag::T_Var)
                        && (var.varno == self.scan_relid
                            || self.inner.is_some_and(|(_, relid)| var.varno == relid))
                        && var.varlevelsup == 0
                })
        }
    }

    /// The value side of a comparison, with its type.
    unsafe fn operand(&mut self, node: *mut pg_sys::Node) -> Option<(Operand, ColumnType)> {
        let stripped = strip_relabel(node);
        if is(stripped, pg_sys::NodeTag::T_Const) {
            // SAFETY: tag checked.
            let c = unsafe { &*(stripped as *mut pg_sys::Const) };
            let ty = column_type_of(c.consttype)?;
            if c.constisnull {
                return Some((Operand::Const(None), ty));
            }
            let value = unsafe { typed_from_datum(ty, c.constvalue) }?;
            return Some((Operand::Const(Some(value)), ty));
        }
        // Anything else is evaluated by Postgres when the scan starts: it
        // must not depend on this scan's rows and must give one value.
        unsafe {
            if self.mentions_scan(node)
                || pg_sys::contain_volatile_functions(node)
                || pg_sys::contain_subplans(node)
            {
                return None;
            }
            let ty = column_type_of(pg_sys::exprType(node))?;
            Some((self.param(node, ParamSpec { ty, list: false }), ty))
        }
    }

    fn param(&mut self, node: *mut pg_sys::Node, spec: ParamSpec) -> Operand {
        // SAFETY: equal() compares two valid expression trees.
        let existing = self
            .params
            .iter()
            .position(|(e, s)| *s == spec && unsafe { pg_sys::equal(e.cast(), node.cast()) });
        Operand::Param(existing.unwrap_or_else(|| {
            self.params.push((node.cast(), spec));
            self.params.len() - 1
        }))
    }

    unsafe fn pred(&mut self, node: *mut pg_sys::Node) -> Option<Pred> {
        use pg_sys::NodeTag::*;
        // SAFETY (whole function): every cast follows a tag check and the
        // planner's trees are well formed.
        unsafe {
            if is(node, T_BoolExpr) {
                let b = &*(node as *mut pg_sys::BoolExpr);
                let mut children = Vec::new();
                for arg in list_nodes(b.args) {
                    children.push(self.pred(arg)?);
                }
                return match b.boolop {
                    pg_sys::BoolExprType::AND_EXPR => Some(Pred::And(children)),
                    pg_sys::BoolExprType::OR_EXPR => Some(Pred::any_of(children)),
                    pg_sys::BoolExprType::NOT_EXPR if children.len() == 1 => {
                        Some(Pred::Not(Box::new(children.pop()?)))
                    }
                    _ => None,
                };
            }
            if is(node, T_OpExpr) {
                return self.op_expr(&*(node as *mut pg_sys::OpExpr));
            }
            if is(node, T_ScalarArrayOpExpr) {
                return self.array_op(&*(node as *mut pg_sys::ScalarArrayOpExpr));
            }
            if is(node, T_NullTest) {
                let t = &*(node as *mut pg_sys::NullTest);
                if t.argisrow {
                    return None;
                }
                let (column, _) = self.column(t.arg.cast())?;
                return Some(Pred::IsNull {
                    column,
                    negated: t.nulltesttype == pg_sys::NullTestType::IS_NOT_NULL,
                });
            }
            if is(node, T_Const) {
                let c = &*(node as *mut pg_sys::Const);
                // A NULL constant is not false under NOT: leave it local.
                if c.consttype == pg_sys::BOOLOID && !c.constisnull {
                    return Some(Pred::Bool(c.constvalue.value() & 0xff != 0));
                }
                return None;
            }
            if let Some((column, ColumnType::Bool)) = self.column(node) {
                return Some(Pred::Cmp {
                    column,
                    op: CmpOp::Eq,
                    value: Operand::Const(Some(TypedValue::Bool(true))),
                });
            }
            None
        }
    }

    unsafe fn op_expr(&mut self, op: &pg_sys::OpExpr) -> Option<Pred> {
        // SAFETY: args of an OpExpr are valid expression nodes.
        let args = unsafe { list_nodes(op.args) };
        let [left, right] = args[..] else {
            return None;
        };
        let name = opname(op.opno)?;
        if let Some(negated) = pushdown::like_negation(&name) {
            return unsafe { self.like(left, right, negated, op.inputcollid) };
        }
        let cmp = pushdown::comparison(&name)?;
        if self.inner.is_some() {
            if let (Some((l, lt)), Some((r, rt))) =
                unsafe { (self.column(left), self.column(right)) }
            {
                return pushdown::columns_comparison_pushable(
                    lt,
                    rt,
                    cmp,
                    collation_class(op.inputcollid),
                )
                .then_some(Pred::Columns {
                    left: l,
                    op: cmp,
                    right: r,
                });
            }
        }
        // column op value, or value op column (commuted).
        let (column, column_ty, value_node, cmp) = match unsafe { self.column(left) } {
            Some((c, t)) => (c, t, right, cmp),
            None => {
                let (c, t) = unsafe { self.column(right) }?;
                (c, t, left, cmp.commuted())
            }
        };
        let (value, value_ty) = unsafe { self.operand(value_node) }?;
        if !pushdown::comparison_pushable(column_ty, value_ty, cmp, collation_class(op.inputcollid))
        {
            return None;
        }
        Some(Pred::Cmp {
            column,
            op: cmp,
            value,
        })
    }

    unsafe fn like(
        &mut self,
        left: *mut pg_sys::Node,
        right: *mut pg_sys::Node,
        negated: bool,
        collid: pg_sys::Oid,
    ) -> Option<Pred> {
        let (column, ty) = unsafe { self.column(left) }?;
        let pattern = strip_relabel(right);
        if !is(pattern, pg_sys::NodeTag::T_Const) {
            return None;
        }
        // SAFETY: tag checked.
        let c = unsafe { &*(pattern as *mut pg_sys::Const) };
        if c.constisnull
            || !pushdown::like_pushable(ty, column_type_of(c.consttype)?, collation_class(collid))
        {
            return None;
        }
        let Some(TypedValue::Text(p)) =
            (unsafe { typed_from_datum(ColumnType::Text, c.constvalue) })
        else {
            return None;
        };
        Some(Pred::Glob {
            column,
            pattern: like_to_glob(&p)?,
            negated,
        })
    }

    unsafe fn array_op(&mut self, op: &pg_sys::ScalarArrayOpExpr) -> Option<Pred> {
        // SAFETY: args of a ScalarArrayOpExpr are valid expression nodes.
        let args = unsafe { list_nodes(op.args) };
        let [left, right] = args[..] else {
            return None;
        };
        let cmp = comparison(op.opno)?;
        let negated = match (cmp, op.useOr) {
            (CmpOp::Eq, true) => false,
            (CmpOp::Ne, false) => true,
            _ => return None,
        };
        let (column, column_ty) = unsafe { self.column(left) }?;
        let right = strip_relabel(right);
        let list = unsafe { self.array_items(right, column_ty, cmp, op.inputcollid) }?;
        let pred = Pred::In { column, list };
        Some(if negated {
            Pred::Not(Box::new(pred))
        } else {
            pred
        })
    }

    /// The elements of the array side of `= ANY(…)`.
    unsafe fn array_items(
        &mut self,
        node: *mut pg_sys::Node,
        column_ty: ColumnType,
        cmp: CmpOp,
        collid: pg_sys::Oid,
    ) -> Option<ListOperand> {
        // SAFETY (whole function): tag checks before casts; deconstruct_array
        // reads a valid, detoasted array of the element type.
        unsafe {
            let element_type = pg_sys::get_element_type(pg_sys::exprType(node));
            let element_ty = column_type_of(element_type)?;
            let collation = collation_class(collid);
            if !pushdown::comparison_pushable(column_ty, element_ty, cmp, collation) {
                return None;
            }
            if is(node, pg_sys::NodeTag::T_Const) {
                let c = &*(node as *mut pg_sys::Const);
                if c.constisnull {
                    return None;
                }
                let items = deconstruct(c.constvalue, element_type, element_ty)?;
                let operands = items.into_iter().map(Operand::Const).collect::<Vec<_>>();
                return Some(ListOperand::Items(operands));
            }
            if is(node, pg_sys::NodeTag::T_ArrayExpr) {
                let a = &*(node as *mut pg_sys::ArrayExpr);
                if a.multidims {
                    return None;
                }
                let mut operands = Vec::new();
                for element in list_nodes(a.elements) {
                    let (operand, ty) = self.operand(element)?;
                    if !pushdown::comparison_pushable(column_ty, ty, cmp, collation) {
                        return None;
                    }
                    operands.push(operand);
                }
                return Some(ListOperand::Items(operands));
            }
            if !pushdown::travels_as_json(element_ty)
                || self.mentions_scan(node)
                || pg_sys::contain_volatile_functions(node)
                || pg_sys::contain_subplans(node)
            {
                return None;
            }
            match self.param(
                node,
                ParamSpec {
                    ty: element_ty,
                    list: true,
                },
            ) {
                Operand::Param(i) => Some(ListOperand::Param(i)),
                Operand::Const(_) => None,
            }
        }
    }
}

/// The elements of a one-dimensional array datum (None for NULL elements).
///
/// # Safety
/// `datum` must be a non-null array of `element_type`.
pub unsafe fn deconstruct(
    datum: pg_sys::Datum,
    element_type: pg_sys::Oid,
    element_ty: ColumnType,
) -> Option<Vec<Option<TypedValue>>> {
    // SAFETY: per the contract; the arrays deconstruct_array returns are
    // palloc'd in CurrentMemoryContext and read before returning.
    unsafe {
        let array = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let mut len = 0i16;
        let mut byval = false;
        let mut align = 0 as std::ffi::c_char;
        pg_sys::get_typlenbyvalalign(element_type, &mut len, &mut byval, &mut align);
        let mut values: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut n = 0i32;
        pg_sys::deconstruct_array(
            array,
            element_type,
            len as i32,
            byval,
            align,
            &mut values,
            &mut nulls,
            &mut n,
        );
        let mut items = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            items.push(if *nulls.add(i) {
                None
            } else {
                Some(typed_from_datum(element_ty, *values.add(i))?)
            });
        }
        Some(items)
    }
}
