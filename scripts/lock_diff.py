"""Print the packages whose versions differ between two uv.lock files (used by `make deps-latest`)."""

import sys
import tomllib


def versions(path: str) -> dict[str, set[str]]:
    """Each package of a uv.lock with its locked versions (a universal lock may hold several per package)."""
    with open(path, "rb") as f:
        packages = tomllib.load(f)["package"]
    out: dict[str, set[str]] = {}
    for package in packages:
        out.setdefault(package["name"], set()).add(package.get("version", "?"))
    return out


def main(old_path: str, new_path: str) -> None:
    old, new = versions(old_path), versions(new_path)
    rows = [
        (name, ", ".join(sorted(old.get(name, {"-"}))), ", ".join(sorted(new.get(name, {"-"}))))
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]
    for name, was, now in rows:
        print(f"{name:32} {was:>20} -> {now}")
    print(f"{len(rows)} package(s) differ from the lock ({len(old)} locked, {len(new)} in the newest resolution)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
