"""The workflow definitions the test stores are opened with."""

from squidmesh import TODAY_ISO8601, Field, Step, Transition, Trigger, Workflow

INVOICE_REMINDER = Workflow(
    "billing.invoice_reminder",
    triggers=[
        Trigger(
            "invoice_delivery",
            payload=[
                Field("account_id", str),
                Field("note", str, required=False),
                Field("posted_on", str, default=TODAY_ISO8601),
            ],
        ),
        Trigger("nightly", cron="0 9 * * 1-5", timezone="Etc/UTC"),
    ],
    steps=[
        Step("load_invoice"),
        Step("approve", kind="approval"),
        Step("send_email"),
        Step("record_rejection"),
    ],
    transitions=[
        Transition("load_invoice", on="ok", to="approve"),
        Transition("approve", on="ok", to="send_email"),
        Transition("approve", on="error", to="record_rejection"),
        Transition("send_email", on="ok", to="complete"),
        Transition("record_rejection", on="ok", to="complete"),
    ],
)

ETL_DAILY = Workflow(
    "etl.daily",
    triggers=[Trigger("manual")],
    steps=[
        Step("extract"),
        Step("transform", after=["extract"]),
        Step("load", after=["transform"]),
        Step("audit", after=["extract"]),
    ],
)

WORKFLOWS = (INVOICE_REMINDER, ETL_DAILY)
