"""Extensions created unbound here and bound to the app in create_app."""

from __future__ import annotations

from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_smorest import Api

from app.store.database import Database

db = Database()
jwt = JWTManager()
limiter = Limiter(key_func=get_remote_address)
api = Api()
