"""The agent package manifest (``agent.json``): a declarative graph, no executable code.

Shape (compatible in spirit with the EngineX ``agent.json`` of the open-source runtime)::

    {
      "agent": {"id": "hourly-tracking", "name": "...", "version": "1.0.0", "description": "..."},
      "goal": {"description": "...", "success_criteria": [...]},        # optional, free form
      "inputs": {"timesheet": {"type": "string", "title": "Timesheet (CSV)", "description": "...",
                               "required": true, "multiline": true, "accept": ".csv,text/csv"}},
      "required_tools": ["http_request"],
      "graph": {
        "entry_node": "summarise", "terminal_nodes": ["write_report"], "max_steps": 20,
        "nodes": [
          {"id": "summarise", "node_type": "llm", "system_prompt": "...", "input_keys": [...],
           "output_keys": ["summary"], "tools": [], "model": "default", "max_iterations": 6},
          {"id": "fetch", "node_type": "tool", "tool": "http_request",
           "arguments": {"url": "{{ inputs.url }}"}, "output_key": "page"},
          {"id": "approve", "node_type": "approval", "question": "Approve {{ summary }}?",
           "options": ["approve", "reject"], "approver_role": "operator",
           "expires_in_minutes": 1440},
          {"id": "write_report", "node_type": "report", "title": "Hours",
           "template": "# Hours\\n{{ summary }}"}
        ],
        "edges": [{"id": "e1", "source": "summarise", "target": "approve",
                   "condition": "on_success"},
                  {"id": "e2", "source": "approve", "target": "write_report",
                   "condition": "conditional", "expr": "approve.decision == 'approve'"}]
      }
    }

``system_prompt_file`` / ``template_file`` name files inside the package instead of inline text.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")]
AgentId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Version = Annotated[str, StringConstraints(pattern=r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]{1,40})?$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]


# Names a package may not give its inputs and outputs: the run's data (inputs, tool results,
# model outputs) shares one namespace, and ``__`` names are kept out of it so that nothing a
# package, an operator or a model writes can look like the engine's own bookkeeping. Refused at
# upload (``package.reserved_name_problems``) and at session start; versions stored before the
# rule still load (the engine keeps no control state in the run's data either way).
RESERVED_PREFIX = "__"


def is_reserved(name: str) -> bool:
    return name.startswith(RESERVED_PREFIX)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AgentInfo(_Strict):
    id: AgentId
    name: ShortText
    version: Version
    description: LongText = ""


class InputSpec(_Strict):
    """One declared input. ``title`` is the start form's label (default: the name in words,
    ``max_rows`` -> "Max rows"); ``accept`` lists the file types the form's file picker offers
    for a string input (``".csv,text/csv"``; multiline string inputs get a picker for text
    files without it): the browser reads the chosen file into the field."""

    type: Literal["string", "number", "integer", "boolean", "array", "object"] = "string"
    title: ShortText = ""
    description: ShortText = ""
    accept: ShortText = ""
    required: bool = False
    default: Any = None
    enum: list[Any] | None = None
    multiline: bool = False
    max_length: Annotated[int, Field(ge=1, le=1_000_000)] = 100_000


class _NodeBase(_Strict):
    id: Identifier
    name: ShortText = ""
    description: LongText = ""


class LLMNode(_NodeBase):
    node_type: Literal["llm"]
    system_prompt: LongText = ""
    system_prompt_file: ShortText | None = None
    input_keys: list[str] = Field(default_factory=list)
    output_keys: Annotated[list[Identifier], Field(min_length=1)]
    tools: list[str] = Field(default_factory=list)
    model: ShortText = "default"
    max_iterations: Annotated[int, Field(ge=1, le=50)] = 8
    # Skills whose instructions are added to the system prompt: the package's own
    # (skills/<name>/SKILL.md) first, else the organization's skill of that name.
    skills: Annotated[list[Identifier], Field(max_length=20)] = Field(default_factory=list)


class ToolNode(_NodeBase):
    node_type: Literal["tool"]
    tool: ShortText
    arguments: dict[str, Any] = Field(default_factory=dict)
    output_key: Identifier | None = None


class ApprovalNode(_NodeBase):
    node_type: Literal["approval"]
    question: LongText
    options: Annotated[list[ShortText], Field(min_length=1, max_length=10)] = Field(
        default_factory=lambda: ["approve", "reject"])
    approver_role: Literal["admin", "builder", "operator", "viewer"] = "operator"
    expires_in_minutes: Annotated[int, Field(ge=1, le=60 * 24 * 30)] = 60 * 24
    output_key: Identifier | None = None


class ReportNode(_NodeBase):
    node_type: Literal["report"]
    title: ShortText = "Report"
    template: LongText = ""
    template_file: ShortText | None = None
    output_key: Identifier | None = None


Node = Annotated[LLMNode | ToolNode | ApprovalNode | ReportNode, Field(discriminator="node_type")]


class Edge(_Strict):
    id: ShortText = ""
    source: Identifier
    target: Identifier
    condition: Literal["always", "on_success", "on_failure", "conditional"] = "on_success"
    expr: Annotated[str, StringConstraints(max_length=1000)] | None = None
    priority: int = 0


class Graph(_Strict):
    entry_node: Identifier
    terminal_nodes: list[Identifier] = Field(default_factory=list)
    max_steps: Annotated[int, Field(ge=1, le=1000)] = 50
    nodes: Annotated[list[Node], Field(min_length=1, max_length=200)]
    edges: Annotated[list[Edge], Field(max_length=1000)] = Field(default_factory=list)

    def node(self, node_id: str) -> LLMNode | ToolNode | ApprovalNode | ReportNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def edges_from(self, node_id: str) -> list[Edge]:
        return sorted((e for e in self.edges if e.source == node_id), key=lambda e: -e.priority)


class AgentManifest(_Strict):
    agent: AgentInfo
    goal: dict[str, Any] | str | None = None
    inputs: dict[Identifier, InputSpec] = Field(default_factory=dict)
    required_tools: list[str] = Field(default_factory=list)
    graph: Graph
    scripted_replies: dict[str, list[Any]] | None = Field(
        default=None, description="Replies of the offline 'scripted' LLM provider, per node.")
