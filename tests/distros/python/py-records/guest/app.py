"""py-records: a sysdeploy guest written in Python, built with componentize-py.

Each export maps one WIT shape so tests/kit.rs can round-trip it through the
API. `set-greeting` is the package's init call; the greeting is kept in
/data, the service's data directory, so it survives restarts.
"""

import wit_world
from wit_world import Item, Shape_Circle, Shape_Square
from wit_world.imports import node
from componentize_py_types import Err

GREETING = "/data/greeting"


class WitWorld(wit_world.WitWorld):
    def set_greeting(self, greeting: str) -> None:
        with open(GREETING, "w") as f:
            f.write(greeting)
        node.log(node.Level.INFO, f"greeting set to {greeting!r}")

    def greeting(self) -> str:
        try:
            with open(GREETING) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def echo_item(self, it: Item) -> Item:
        return Item(it.item_name, it.count * 2, it.tags + ["seen"], it.note, it.big)

    def find(self, items: list[Item], name: str) -> Item | None:
        for it in items:
            if it.item_name == name:
                return it
        return None

    def grow(self, s):
        if isinstance(s, Shape_Circle):
            return Shape_Circle(s.value * 2.0)
        if isinstance(s, Shape_Square):
            return Shape_Square(s.value + 1)
        return Shape_Square(1)

    def checked_div(self, a: int, b: int) -> int:
        if b == 0:
            raise Err("division by zero")
        return a // b
