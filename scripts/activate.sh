
# --- added by mira-dagster's `make setup` ---
# dagster 1.13's `dagster asset|job ...` reads neither workspace.yaml nor [tool.dagster], only -m or
# DAGSTER_MODULE_NAME; `dagster dev` must not see that variable (it rejects it beside its own workspace).
# So only those subcommands get the code location.
dagster() {
    case "$1" in
        asset|job) DAGSTER_MODULE_NAME="${DAGSTER_MODULE_NAME:-mira_dagster.definitions}" command dagster "$@" ;;
        *) command dagster "$@" ;;
    esac
}
