//! The catalog: every task definition of the loaded taskflow plugins, with
//! inheritance resolved, and the menu tree of start tasks.
//!
//! A catalog is an immutable value built from a set of plugins. The plugin
//! registry builds a new one whenever a plugin is loaded, replaced or
//! unloaded, and swaps it in with the plugins it was built from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::merge::merge_value;

/// One task definition as a plugin declared it, with its config parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Dotted id.
    pub id: String,
    /// Name shown in menus.
    pub label: String,
    /// Whether users may start a thread with it.
    pub start: bool,
    /// Environments; `None` inherits from the parent id.
    pub environments: Option<Vec<String>>,
    /// Config; merged over the parents' config.
    pub config: Option<Value>,
    /// The task that follows this one.
    pub next_task: Option<String>,
    /// The task to start when this one fails.
    pub error_task: Option<String>,
}

impl Definition {
    /// Whether the entry only labels the ids below it. Several plugins may
    /// declare the same label node; anything more belongs to one plugin.
    pub fn is_label_only(&self) -> bool {
        !self.start
            && self.environments.is_none()
            && self.config.is_none()
            && self.next_task.is_none()
            && self.error_task.is_none()
    }
}

/// A definition with everything it inherits filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedDefinition {
    /// Dotted id.
    pub id: String,
    /// Name shown in menus.
    pub label: String,
    /// Whether users may start a thread with it.
    pub start: bool,
    /// Environments, nearest declaration wins; empty when none declares any.
    pub environments: Vec<String>,
    /// Config of all ancestors merged, the child winning.
    pub config: Value,
    /// The task that follows this one.
    pub next_task: Option<String>,
    /// The nearest declared error task.
    pub error_task: Option<String>,
    /// The plugin that declared the definition.
    pub plugin: Arc<str>,
}

/// One node of the menu tree.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MenuNode {
    /// Dotted id.
    pub id: String,
    /// Name shown in menus.
    pub label: String,
    /// Whether this node can be started.
    pub start: bool,
    /// Nodes one level below.
    #[schema(no_recursion)]
    pub children: Vec<MenuNode>,
}

/// The tasks of one taskflow and the edges between them, for drawing.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskflowGraph {
    /// The taskflow's id, a prefix of its tasks' ids.
    pub id: String,
    /// Its label.
    pub label: String,
    /// Its tasks, in declaration order, and the targets of its edges.
    pub tasks: Vec<GraphTask>,
    /// `next` and `error` edges between tasks.
    pub edges: Vec<GraphEdge>,
}

/// A task in a [`TaskflowGraph`].
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraphTask {
    /// Dotted id.
    pub id: String,
    /// Name shown in menus.
    pub label: String,
    /// Whether users may start a thread with it.
    pub start: bool,
    /// Environments it needs.
    pub environments: Vec<String>,
}

/// An edge in a [`TaskflowGraph`].
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GraphEdge {
    /// The task the edge leaves.
    pub from: String,
    /// The task it leads to.
    pub to: String,
    /// `next` (when done) or `error` (when failed).
    pub kind: String,
}

/// Why a plugin's definitions cannot join the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// An id is not a dotted path of letters, digits, `_` and `-`.
    #[error("task id {0:?} is invalid; use dot-separated segments of letters, digits, `_` and `-`")]
    InvalidId(String),
    /// A reference names no valid id.
    #[error("`{field}` of task {id} is {target:?}, which is not a valid task id")]
    InvalidReference {
        /// The definition.
        id: String,
        /// `nextTask` or `errorTask`.
        field: &'static str,
        /// The value.
        target: String,
    },
    /// The plugin declares an id twice.
    #[error("task id {0} is declared twice")]
    Duplicate(String),
    /// Another plugin already declares the id.
    #[error("task id {id} is already declared by plugin `{owner}`; rename it or unload `{owner}`")]
    Taken {
        /// The id.
        id: String,
        /// The plugin that declares it.
        owner: String,
    },
}

/// Every definition of the loaded plugins.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    resolved: HashMap<String, ResolvedDefinition>,
    labels: HashMap<String, String>,
    /// Ids in declaration order: plugins by name, then each plugin's order.
    order: Vec<String>,
}

impl Catalog {
    /// Builds a catalog from each plugin's definitions, plugins taken in
    /// name order.
    ///
    /// # Errors
    ///
    /// Fails when two plugins declare the same id (label-only nodes
    /// excepted), naming the first conflict.
    pub fn build<'a>(
        plugins: impl IntoIterator<Item = (&'a str, &'a [Definition])>,
    ) -> Result<Self, CatalogError> {
        let mut declared: BTreeMap<&str, (&Definition, Arc<str>)> = BTreeMap::new();
        let mut order = Vec::new();
        for (plugin, definitions) in plugins {
            let plugin: Arc<str> = Arc::from(plugin);
            for definition in definitions {
                match declared.get(definition.id.as_str()) {
                    Some((existing, owner)) => {
                        if !(existing.is_label_only() && definition.is_label_only()) {
                            return Err(CatalogError::Taken {
                                id: definition.id.clone(),
                                owner: owner.to_string(),
                            });
                        }
                    }
                    None => {
                        declared.insert(&definition.id, (definition, plugin.clone()));
                        order.push(definition.id.clone());
                    }
                }
            }
        }

        let labels = declared
            .iter()
            .map(|(id, (definition, _))| (id.to_string(), definition.label.clone()))
            .collect();
        let resolved = declared
            .iter()
            .map(|(id, (definition, plugin))| {
                (
                    id.to_string(),
                    resolve(definition, plugin.clone(), &declared),
                )
            })
            .collect();
        Ok(Self {
            resolved,
            labels,
            order,
        })
    }

    /// Returns the resolved definition of `id`.
    pub fn get(&self, id: &str) -> Option<&ResolvedDefinition> {
        self.resolved.get(id)
    }

    /// Returns the nearest `*.error` definition for a task `id`: the
    /// `error` child of the id itself, then of each ancestor.
    pub fn nearest_error_task(&self, id: &str) -> Option<&ResolvedDefinition> {
        let mut prefix = id;
        loop {
            let candidate = format!("{prefix}.error");
            if candidate != id
                && let Some(definition) = self.resolved.get(&candidate)
            {
                return Some(definition);
            }
            prefix = &prefix[..prefix.rfind('.')?];
        }
    }

    /// Returns the ids of every definition, in declaration order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Returns the graph of the taskflow `id`: every task whose id starts
    /// with `id.`, the tasks its edges lead to, and the edges. `None` when
    /// no task is below `id`.
    pub fn graph(&self, id: &str) -> Option<TaskflowGraph> {
        let prefix = format!("{id}.");
        let members: Vec<&ResolvedDefinition> = self
            .order
            .iter()
            .filter(|task_id| task_id.starts_with(&prefix))
            .map(|task_id| &self.resolved[task_id])
            .filter(|definition| !self.is_label_node(definition))
            .collect();
        if members.is_empty() {
            return None;
        }

        let mut edges = Vec::new();
        for definition in &members {
            if let Some(next) = &definition.next_task {
                edges.push(GraphEdge {
                    from: definition.id.clone(),
                    to: next.clone(),
                    kind: "next".into(),
                });
            }
            if let Some(error) = self.error_target(definition) {
                edges.push(GraphEdge {
                    from: definition.id.clone(),
                    to: error,
                    kind: "error".into(),
                });
            }
        }

        let mut tasks: Vec<GraphTask> = members
            .iter()
            .map(|definition| graph_task(definition))
            .collect();
        for edge in &edges {
            if !tasks.iter().any(|task| task.id == edge.to) {
                tasks.push(match self.resolved.get(&edge.to) {
                    Some(definition) => graph_task(definition),
                    None => GraphTask {
                        id: edge.to.clone(),
                        label: format!("{} (not loaded)", edge.to),
                        start: false,
                        environments: Vec::new(),
                    },
                });
            }
        }
        Some(TaskflowGraph {
            id: id.to_owned(),
            label: self.label(id),
            tasks,
            edges,
        })
    }

    /// Returns where a failure of `definition` leads: `config.errorTask`,
    /// the definition's error task, or the nearest `*.error`.
    fn error_target(&self, definition: &ResolvedDefinition) -> Option<String> {
        definition
            .config
            .get("errorTask")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| definition.error_task.clone())
            .or_else(|| {
                self.nearest_error_task(&definition.id)
                    .map(|target| target.id.clone())
            })
    }

    /// Whether a definition only groups and labels the ids below it.
    fn is_label_node(&self, definition: &ResolvedDefinition) -> bool {
        let prefix = format!("{}.", definition.id);
        !definition.start
            && definition.next_task.is_none()
            && self.order.iter().any(|id| id.starts_with(&prefix))
    }

    /// Returns the menu: every start definition and the nodes above it.
    pub fn menu(&self) -> Vec<MenuNode> {
        self.menu_for(None)
    }

    /// Returns whether someone in `groups` may start a start task at or
    /// below `id`. A taskflow without start tasks stays visible.
    pub fn may_start_below(&self, id: &str, groups: &[String]) -> bool {
        let prefix = format!("{id}.");
        let mut starts = self
            .order
            .iter()
            .filter(|task_id| *task_id == id || task_id.starts_with(&prefix))
            .map(|task_id| &self.resolved[task_id])
            .filter(|definition| definition.start)
            .peekable();
        if starts.peek().is_none() {
            return true;
        }
        starts.any(|definition| {
            start_groups(definition)
                .is_none_or(|allowed| allowed.iter().any(|group| groups.contains(group)))
        })
    }

    /// Returns the menu of someone in `groups`: the start definitions whose
    /// `config.groups` allows one of them (or that allow everyone), and the
    /// nodes above them. `None` shows every start definition.
    pub fn menu_for(&self, groups: Option<&[String]>) -> Vec<MenuNode> {
        let mut roots: Vec<MenuNode> = Vec::new();
        for id in &self.order {
            let definition = &self.resolved[id];
            if !definition.start {
                continue;
            }
            let allowed = match (groups, start_groups(definition)) {
                (Some(groups), Some(allowed)) => allowed.iter().any(|group| groups.contains(group)),
                _ => true,
            };
            if allowed {
                self.insert_path(&mut roots, id);
            }
        }
        roots
    }

    fn insert_path(&self, roots: &mut Vec<MenuNode>, id: &str) {
        let mut level = roots;
        let mut end = 0;
        loop {
            end = id[end..].find('.').map_or(id.len(), |dot| end + dot);
            let prefix = &id[..end];
            let position = match level.iter().position(|node| node.id == prefix) {
                Some(position) => position,
                None => {
                    level.push(MenuNode {
                        id: prefix.to_owned(),
                        label: self.label(prefix),
                        start: self.resolved.get(prefix).is_some_and(|d| d.start),
                        children: Vec::new(),
                    });
                    level.len() - 1
                }
            };
            if end == id.len() {
                return;
            }
            level = &mut level[position].children;
            end += 1;
        }
    }

    fn label(&self, id: &str) -> String {
        self.labels
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.rsplit('.').next().unwrap_or(id).to_owned())
    }
}

/// Returns the groups allowed to start a definition, from its (inherited)
/// `config.groups`; `None` allows everyone. A value that is not a list of
/// names allows nobody, so a typo never opens a task to everyone.
pub fn start_groups(definition: &ResolvedDefinition) -> Option<Vec<String>> {
    match definition.config.get("groups")? {
        Value::Null => None,
        Value::Array(groups) if groups.iter().all(Value::is_string) => Some(
            groups
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        other => {
            tracing::warn!(
                task = %definition.id,
                groups = %other,
                "`config.groups` is not a list of group names; nobody may start this task"
            );
            Some(Vec::new())
        }
    }
}

/// Returns a definition's thread mode from its `config.threadMode`: `new`
/// (the default), `user`, `group` or `session`.
///
/// # Errors
///
/// A message when the value is something else.
pub fn thread_mode(definition: &ResolvedDefinition) -> Result<&'static str, String> {
    match definition.config.get("threadMode") {
        None | Some(Value::Null) => Ok("new"),
        Some(Value::String(mode)) => match mode.as_str() {
            "new" => Ok("new"),
            "user" => Ok("user"),
            "group" => Ok("group"),
            "session" => Ok("session"),
            other => Err(format!(
                "task {}: `config.threadMode` is {other:?}; use new, user, group or session",
                definition.id
            )),
        },
        Some(other) => Err(format!(
            "task {}: `config.threadMode` must be a string, not {other}",
            definition.id
        )),
    }
}

/// Checks one plugin's definitions on their own: id syntax, references and
/// duplicates.
///
/// # Errors
///
/// Returns the first problem found.
pub fn check_definitions(definitions: &[Definition]) -> Result<(), CatalogError> {
    let mut seen = std::collections::HashSet::new();
    for definition in definitions {
        if !is_valid_id(&definition.id) {
            return Err(CatalogError::InvalidId(definition.id.clone()));
        }
        if !seen.insert(definition.id.as_str()) {
            return Err(CatalogError::Duplicate(definition.id.clone()));
        }
        let references = [
            ("nextTask", &definition.next_task),
            ("errorTask", &definition.error_task),
        ];
        for (field, target) in references {
            if let Some(target) = target
                && !is_valid_id(target)
            {
                return Err(CatalogError::InvalidReference {
                    id: definition.id.clone(),
                    field,
                    target: target.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Whether `id` is a dotted path of letters, digits, `_` and `-`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

fn graph_task(definition: &ResolvedDefinition) -> GraphTask {
    GraphTask {
        id: definition.id.clone(),
        label: definition.label.clone(),
        start: definition.start,
        environments: definition.environments.clone(),
    }
}

fn resolve(
    definition: &Definition,
    plugin: Arc<str>,
    declared: &BTreeMap<&str, (&Definition, Arc<str>)>,
) -> ResolvedDefinition {
    // Ancestors from the root down to the definition itself.
    let mut chain: Vec<&Definition> = Vec::new();
    let id = definition.id.as_str();
    for (end, _) in id.match_indices('.') {
        if let Some((ancestor, _)) = declared.get(&id[..end]) {
            chain.push(ancestor);
        }
    }
    chain.push(definition);

    let mut config = Value::Null;
    let mut environments = Vec::new();
    let mut error_task = None;
    for link in &chain {
        if let Some(link_config) = &link.config {
            merge_value(&mut config, link_config);
        }
        if let Some(link_environments) = &link.environments {
            environments.clone_from(link_environments);
        }
        if link.error_task.is_some() {
            error_task.clone_from(&link.error_task);
        }
    }

    ResolvedDefinition {
        id: definition.id.clone(),
        label: definition.label.clone(),
        start: definition.start,
        environments,
        config,
        next_task: definition.next_task.clone(),
        error_task,
        plugin,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn label(id: &str, label: &str) -> Definition {
        Definition {
            id: id.into(),
            label: label.into(),
            start: false,
            environments: None,
            config: None,
            next_task: None,
            error_task: None,
        }
    }

    fn story() -> Vec<Definition> {
        vec![
            label("examples", "Examples"),
            Definition {
                environments: Some(vec!["llm".into()]),
                config: Some(json!({"temperature": 0, "style": {"tone": "calm"}})),
                error_task: Some("examples.story.oops".into()),
                ..label("examples.story", "Story")
            },
            Definition {
                start: true,
                environments: Some(vec![]),
                next_task: Some("examples.story.summarize".into()),
                ..label("examples.story.start", "Write a story")
            },
            Definition {
                config: Some(json!({"style": {"length": 3}, "prompt": "p"})),
                ..label("examples.story.summarize", "Summarize")
            },
            label("examples.story.error", "Failed"),
        ]
    }

    #[test]
    fn child_inherits_environments_config_and_error_task() {
        let definitions = story();
        let catalog = Catalog::build([("story", definitions.as_slice())]).unwrap();
        let summarize = catalog.get("examples.story.summarize").unwrap();
        assert_eq!(summarize.environments, vec!["llm".to_owned()]);
        assert_eq!(
            summarize.config,
            json!({"temperature": 0, "style": {"tone": "calm", "length": 3}, "prompt": "p"})
        );
        assert_eq!(summarize.error_task.as_deref(), Some("examples.story.oops"));
        assert_eq!(&*summarize.plugin, "story");
    }

    #[test]
    fn empty_environments_override_parent() {
        let definitions = story();
        let catalog = Catalog::build([("story", definitions.as_slice())]).unwrap();
        assert!(
            catalog
                .get("examples.story.start")
                .unwrap()
                .environments
                .is_empty()
        );
    }

    #[test]
    fn menu_holds_start_tasks_and_their_parents() {
        let definitions = story();
        let catalog = Catalog::build([("story", definitions.as_slice())]).unwrap();
        let menu = catalog.menu();
        assert_eq!(menu.len(), 1);
        assert_eq!(menu[0].label, "Examples");
        assert_eq!(menu[0].children[0].label, "Story");
        let leaves = &menu[0].children[0].children;
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].id, "examples.story.start");
        assert!(leaves[0].start);
    }

    #[test]
    fn undeclared_parent_is_labelled_by_segment() {
        let definitions = vec![Definition {
            start: true,
            ..label("tools.convert.start", "Convert")
        }];
        let catalog = Catalog::build([("tools", definitions.as_slice())]).unwrap();
        let menu = catalog.menu();
        assert_eq!(menu[0].label, "tools");
        assert_eq!(menu[0].children[0].label, "convert");
    }

    #[test]
    fn nearest_error_task_walks_up() {
        let definitions = story();
        let catalog = Catalog::build([("story", definitions.as_slice())]).unwrap();
        let nearest = catalog
            .nearest_error_task("examples.story.summarize")
            .unwrap();
        assert_eq!(nearest.id, "examples.story.error");
        assert!(catalog.nearest_error_task("examples.other").is_none());
        assert!(catalog.nearest_error_task("examples.story.error").is_none());
    }

    #[test]
    fn id_taken_by_other_plugin_is_rejected() {
        let first = story();
        let second = vec![label("examples", "Shared label"), story()[3].clone()];
        let error =
            Catalog::build([("story", first.as_slice()), ("copy", second.as_slice())]).unwrap_err();
        assert_eq!(
            error,
            CatalogError::Taken {
                id: "examples.story.summarize".into(),
                owner: "story".into()
            }
        );
    }

    #[test]
    fn shared_label_nodes_are_allowed() {
        let first = story();
        let second = vec![
            label("examples", "Other label"),
            Definition {
                start: true,
                ..label("examples.poem.start", "Poem")
            },
        ];
        let catalog =
            Catalog::build([("story", first.as_slice()), ("poem", second.as_slice())]).unwrap();
        assert_eq!(catalog.menu()[0].label, "Examples");
        assert_eq!(catalog.menu()[0].children.len(), 2);
    }

    #[test]
    fn graph_has_next_and_error_edges() {
        let definitions = vec![
            label("flow", "Flow"),
            Definition {
                start: true,
                environments: Some(vec![]),
                next_task: Some("flow.check".into()),
                ..label("flow.start", "Start")
            },
            Definition {
                config: Some(json!({"errorTask": "flow.recover"})),
                environments: Some(vec!["checker".into()]),
                next_task: Some("other.end".into()),
                ..label("flow.check", "Check")
            },
            label("flow.recover", "Recover"),
            label("flow.error", "Failed"),
        ];
        let catalog = Catalog::build([("flow", definitions.as_slice())]).unwrap();
        let graph = catalog.graph("flow").unwrap();
        assert_eq!(graph.label, "Flow");
        let ids: Vec<&str> = graph.tasks.iter().map(|task| task.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "flow.start",
                "flow.check",
                "flow.recover",
                "flow.error",
                "other.end"
            ]
        );
        assert_eq!(graph.tasks[4].label, "other.end (not loaded)");
        let edges: Vec<(&str, &str, &str)> = graph
            .edges
            .iter()
            .map(|edge| (edge.from.as_str(), edge.to.as_str(), edge.kind.as_str()))
            .collect();
        assert!(edges.contains(&("flow.start", "flow.check", "next")));
        assert!(edges.contains(&("flow.start", "flow.error", "error")));
        assert!(edges.contains(&("flow.check", "flow.recover", "error")));
        assert!(edges.contains(&("flow.check", "other.end", "next")));
        assert!(catalog.graph("nothing").is_none());
    }

    #[test]
    fn definitions_are_checked() {
        assert_eq!(
            check_definitions(&[label("a..b", "x")]),
            Err(CatalogError::InvalidId("a..b".into()))
        );
        assert_eq!(
            check_definitions(&[label("a", "x"), label("a", "y")]),
            Err(CatalogError::Duplicate("a".into()))
        );
        let bad_next = Definition {
            next_task: Some("has space".into()),
            ..label("a", "x")
        };
        assert!(matches!(
            check_definitions(&[bad_next]),
            Err(CatalogError::InvalidReference {
                field: "nextTask",
                ..
            })
        ));
        assert!(check_definitions(&story()).is_ok());
    }
}
