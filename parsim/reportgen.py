def write_report(paths, out, formats=("md", "html"), title=""):
    return []
