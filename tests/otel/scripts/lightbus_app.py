"""A real Lightbus 1.1.2 application for tests/otel/test_otel_lightbus.py (run by a Python
that has lightbus installed, never imported by the test suite itself).

As a worker (`lightbus run --bus lightbus_app`): serves `auth.check_password` and listens to
`auth.user_registered` as listener `lb_listener`, appending each event it handles to the
JSON-lines file named by $LB_OUT. As a script (`python lightbus_app.py fire USERNAME`): fires
`auth.user_registered` once, as any Lightbus publisher would.
"""

import json
import os
import sys

import lightbus


class AuthApi(lightbus.Api):
    user_registered = lightbus.Event(parameters=("username", "email"))

    class Meta:
        name = "auth"

    def check_password(self, username, password):
        return username == "admin" and password == "secret"


bus = lightbus.create(config_file=os.environ["LB_CONFIG"])
bus.client.register_api(AuthApi())


def on_registered(event, username, email):
    with open(os.environ["LB_OUT"], "a") as out:
        out.write(json.dumps({"id": event.id, "username": username, "email": email}) + "\n")


@bus.client.on_start()
def listen(**_):
    bus.auth.user_registered.listen(on_registered, listener_name="lb_listener")


if __name__ == "__main__" and sys.argv[1:2] == ["fire"]:
    bus.auth.user_registered.fire(username=sys.argv[2], email="lb@example.com")
    bus.client.close()
