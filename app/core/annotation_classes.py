"""The classes an annotation can have: QuPath's defaults, and the list the user extends.

The GUI keeps user-added classes in its settings as JSON (`classes_to_json` /
`classes_from_json`), so a class made on one slide is offered on the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from app.errors import DelineoError


class ClassListError(DelineoError):
    pass


@dataclass(frozen=True)
class AnnotationClass:
    name: str
    color: tuple[int, int, int]


# QuPath's default names and colours, so a file moves between the two without surprises.
DEFAULT_CLASSES: tuple[AnnotationClass, ...] = (
    AnnotationClass("Tumor", (200, 0, 0)),
    AnnotationClass("Stroma", (150, 200, 150)),
    AnnotationClass("Necrosis", (50, 50, 50)),
    AnnotationClass("Immune cells", (160, 90, 160)),
    AnnotationClass("Other", (255, 200, 0)),
)


def classes_to_json(classes: list[AnnotationClass] | tuple[AnnotationClass, ...]) -> str:
    return json.dumps([{"name": c.name, "color": list(c.color)} for c in classes])


def classes_from_json(text: str | list, where: str = "the class list") -> list[AnnotationClass]:
    """Classes from `classes_to_json`'s text (or its parsed list); `where` names the setting
    in the error a damaged list raises."""
    try:
        data = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as e:
        raise ClassListError(f"{where}: not valid JSON ({e.msg}); reset the class list") from None
    if not isinstance(data, list):
        raise ClassListError(f"{where}: expected a list of classes; reset the class list")
    out: list[AnnotationClass] = []
    for i, item in enumerate(data):
        name = item.get("name") if isinstance(item, dict) else None
        color = item.get("color") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise ClassListError(f"{where}: class {i} has no name; reset the class list")
        if (
            not isinstance(color, list | tuple)
            or len(color) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)
        ):
            raise ClassListError(
                f"{where}: class '{name}' needs a colour [r, g, b] of 0-255; reset the class list"
            )
        out.append(AnnotationClass(name.strip(), tuple(color)))
    return out
