"""The fixed block of a SunSpec model JSON group, shared by
gen-sunspec-models.py and check-sunspec-models.py.

Python 3.11+ standard library only.
"""


def fixed_points(group):
    """(name, offset, point) of the fixed block of a model, and its length L."""
    out, offset = [], 0
    for p in group["points"]:
        out.append((p["name"], offset, p))
        offset += p["size"]
    for sub in group.get("groups", []):
        # count 0 (or a point name) means repeating: not part of the fixed block.
        if sub.get("count", 1) != 1:
            continue
        for p in sub["points"]:
            out.append((f'{sub["name"]}_{p["name"]}', offset, p))
            offset += p["size"]
    return out, offset - 2
