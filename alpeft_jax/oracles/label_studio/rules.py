"""The Label Studio oracle's labelling rules, over plain dicts and lists shaped as Label Studio's API returns them.

Nothing here talks to a server. A task is `{"id", "data": {..., "alpeft_id", "alpeft_round", "alpeft_run"},
"annotations": [...]}`; an annotation is `{"id", "result": [{"from_name", "to_name", "type": "choices", "value":
{"choices": [NAME]}}], "was_cancelled", "created_at", "updated_at", "completed_by", "lead_time"}`.

- An annotation counts when it is not cancelled and chose exactly one class of its `<Choices>`; a cancelled one,
  or one submitted with no class, marks the task skipped (unless another annotation of it counts).
- A skipped example (`round_labels`): with `skipped="exclude"` it is a "can't tell", label -1 (the run excludes
  it); with `"ask"` it stays unlabelled and the round waits for a class.
- Several counted annotations of one example (one task or several): "latest" takes the most recently updated,
  "majority" the most frequent class, a tie going to the tied class annotated last.
- A class name not among the dataset's, or several classes in one annotation: an error naming the task.
"""

from __future__ import annotations

import collections
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

from alpeft_jax.oracles.base import LabelFileError

Task = dict[str, Any]
Annotation = dict[str, Any]


def label_config(class_names: list[str]) -> str:
    """An image-classification labelling config: the image and one required single choice per class."""
    choices = "".join(f"    <Choice value={quoteattr(n)}/>\n" for n in class_names)
    return (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInline="true" required="true">\n'
        f"{choices}  </Choices>\n</View>\n"
    )


def read_label_config(config: str, class_names: list[str], where: str) -> dict[str, Any]:
    """{'image', 'choices', 'key', 'classes'}: the names in a labelling config; every class must be a choice.

    The first `<Choices>` over an `<Image>` whose value is a task field (`$key`) is the one read.
    """
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise LabelFileError(f"{where}: cannot parse its labelling config ({e}).") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
    for el in root.iter("Choices"):
        if el.get("toName") in images and images[el.get("toName")].startswith("$"):
            classes = [c.get("value") or "" for c in el.iter("Choice")]
            absent = [n for n in class_names if n not in classes]
            if absent:
                raise LabelFileError(
                    f"{where}: its choices lack the classes {absent[:10]}"
                    f"{' ...' if len(absent) > 10 else ''}; add a <Choice value=.../> for each, "
                    "or leave --config.label_studio.project empty to make a project."
                )
            return {
                "image": el.get("toName"),
                "choices": el.get("name"),
                "key": images[el.get("toName")][1:],
                "classes": classes,
            }
    raise LabelFileError(
        f'{where}: its labelling config needs an <Image value="$..."/> and a <Choices> '
        "for it with one <Choice> per class."
    )


def round_query(run_key: str, round_index: int) -> str:
    """The tasks-list filter for one run's round (the data fields every task of the run carries)."""
    return json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:data.alpeft_run", "operator": "equal", "type": "String", "value": run_key},
                    {
                        "filter": "filter:tasks:data.alpeft_round",
                        "operator": "equal",
                        "type": "Number",
                        "value": round_index,
                    },
                ],
            }
        }
    )


def by_example(tasks: Iterable[Task], run_key: str) -> dict[int, list[Task]]:
    """This run's tasks by example id (several if an example was imported twice); other tasks are left out."""
    out: dict[int, list[Task]] = collections.defaultdict(list)
    for t in tasks:
        data = t.get("data") or {}
        if data.get("alpeft_run") == run_key and data.get("alpeft_id") is not None:
            out[int(data["alpeft_id"])].append(t)
    return out


def deleted(ids: list[int], found: Mapping[int, Any], recorded: Mapping[str, int]) -> list[int]:
    """Example ids whose task was recorded as imported but is no longer in the project."""
    return [i for i in ids if i not in found and str(i) in recorded]


def new_task(
    names: Mapping[str, Any],
    image: str,
    ident: int,
    round_index: int,
    run_key: str,
    guess: tuple[str, float, str] | None = None,
) -> Task:
    """A task to import: the image under the config's key, our ids, and the model's (class, score, version)."""
    task: Task = {"data": {names["key"]: image, "alpeft_id": ident, "alpeft_round": round_index, "alpeft_run": run_key}}
    if guess is not None:
        name, score, version = guess
        task["predictions"] = [{"model_version": version, "score": float(score), "result": choice_result(names, name)}]
    return task


def choice_result(names: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The result of an annotation or prediction choosing class `name` in the project's `<Choices>`."""
    return [{"from_name": names["choices"], "to_name": names["image"], "type": "choices", "value": {"choices": [name]}}]


def chosen(ann: Annotation, choices_name: str) -> list[str]:
    """The classes an annotation chose in the `<Choices>` named `choices_name` (results without a name count)."""
    return [
        c
        for res in ann.get("result") or []
        if res.get("from_name", choices_name) == choices_name
        for c in (res.get("value") or {}).get("choices") or []
    ]


def decide(
    tasks: list[Task],
    *,
    choices_name: str,
    multiple: str,
    parse_label: Callable[[str, str], int],
    ident: int,
    link: str,
) -> tuple[int | None, list[Annotation], bool]:
    """(label or None, the annotations that decided it, whether skipped) for one example's tasks.

    `parse_label(name, where)` maps a chosen class to its index or raises; `link` is the project's data page,
    named in errors.
    """
    votes = []
    skipped = False
    for t in tasks:
        for ann in t.get("annotations") or []:
            if ann.get("was_cancelled"):
                skipped = True
                continue
            choices = chosen(ann, choices_name)
            where = (
                f"Label Studio task {t['id']} (example id {ident}), annotation {ann.get('id')} ({link}?task={t['id']})"
            )
            if not choices:
                skipped = True
                continue
            if len(choices) > 1:
                raise LabelFileError(f"{where}: chose {len(choices)} classes {choices}; keep one class.")
            label = parse_label(str(choices[0]), where)
            votes.append(
                (str(ann.get("updated_at") or ann.get("created_at") or ""), int(ann.get("id") or 0), label, ann)
            )
    if not votes:
        return None, [], skipped
    votes.sort(key=lambda v: (v[0], v[1]))
    if multiple == "latest":
        return votes[-1][2], [votes[-1][3]], False
    counts = collections.Counter(v[2] for v in votes)
    best = max(counts.values())
    winner = next(v[2] for v in reversed(votes) if counts[v[2]] == best)  # ties: the class annotated last
    return winner, [v[3] for v in votes], False


def round_labels(labels: Iterable[int], skipped_at: Iterable[bool], skipped: str) -> list[int] | None:
    """The round's labels once every example is decided, else None: labels (-1: none yet) and which examples were
    skipped; `skipped="exclude"` makes a skipped example's label -1 (can't tell), `"ask"` waits for a class."""
    out = []
    for label, was_skipped in zip(labels, skipped_at):
        if label >= 0:
            out.append(int(label))
        elif was_skipped and skipped == "exclude":
            out.append(-1)
        else:
            return None
    return out


def facts(
    ids: list[int],
    labels: Iterable[int],
    counted: list[Annotation],
    predicted: Mapping[str, list[Any]],
    annotator: Callable[[Any], str],
) -> dict[str, Any]:
    """A round's labelling facts: annotators, annotations, lead times, predictions sent and accepted.

    `predicted`: example id (str) -> [predicted class, score]; `annotator(completed_by)`: a name for a user.
    """
    lead = [float(a["lead_time"]) for a in counted if a.get("lead_time") is not None]
    sent = [i for i in ids if str(i) in predicted]
    accepted = sum(int(predicted[str(i)][0]) == int(lab) for i, lab in zip(ids, labels) if str(i) in predicted)
    return {
        "annotators": sorted({annotator(a.get("completed_by")) for a in counted}),
        "annotations": len(counted),
        "lead_time_total_s": round(sum(lead), 3),
        "lead_time_mean_s": round(sum(lead) / len(lead), 3) if lead else None,
        "predictions_sent": len(sent),
        "predictions_accepted": int(accepted),
    }


def storages_to_add(rels: list[str], local_root: str, have: list[str]) -> list[str]:
    """The folders to register as local storages so that every image (a path relative to `local_root`) is served.

    One storage per top-level folder under `local_root` (a storage may not be the root itself), over the common
    folder of that folder's images, unless existing storages (`have`) already cover them.
    """
    have = [os.path.normpath(h) for h in have if h]
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for rel in rels:
        groups[rel.split(os.sep, 1)[0]].append(os.path.join(local_root, os.path.dirname(rel)))
    out = []
    for dirs in groups.values():
        if all(any(d == h or d.startswith(h + os.sep) for h in have) for d in dirs):
            continue
        common = os.path.commonpath(dirs)
        out.append(common)
        have.append(common)
    return out
