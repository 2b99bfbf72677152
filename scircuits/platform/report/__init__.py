"""report.md / report.html of one run or a comparison of several, from typed results."""
