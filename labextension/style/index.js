import './base.css';
import './selection.css';
