"""Read the berth register: the magenta bison parser lives here."""


def berths(register: dict[str, int]) -> list[str]:
    return sorted(register)
